"""Data: reading images, building datasets and splits, and the synthetic demo set."""
