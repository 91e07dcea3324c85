"""Lightning writes training checkpoints through `lungcnn.fileio.atomic_open` too.

Lightning's own `TorchCheckpointIO` saves through an fsspec transaction whose temporary file lives in the
system temp folder and is moved into place with `shutil.move`: an atomic rename only when that folder is on
the same file system as the run directory (a tmpfs /tmp or a mounted volume turns it into a copy that a
crash can cut short), never fsynced, and a killed process leaves the temporary file behind in /tmp. Here the
temporary file sits beside the checkpoint, is fsynced, and is renamed over it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from lungcnn.fileio import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with an atomic, fsynced local write; remote paths keep Lightning's fsspec path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # s3://, gs://, file://...
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
