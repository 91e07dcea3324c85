"""Sweeps: sharing the cores among parallel jobs, the value returned to a sweeper, and the sweep report."""

from lungcnn.sweeps.launchers import quiet_schema_matching

# Here rather than in lungcnn.train: a launcher's job process rebuilds the task function by value (it was
# defined in __main__), importing this package but never running train.py's module code, then composes the
# job's config, which is when Hydra would warn.
quiet_schema_matching()
