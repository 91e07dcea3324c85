"""Sweeps: sharing the cores among parallel jobs, the value returned to a sweeper, and the sweep report."""
