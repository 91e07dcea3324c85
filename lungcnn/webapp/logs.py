"""Where the page's own log lines go: standard error of the Streamlit process, beside Streamlit's.

Streamlit configures only its own loggers; without this, `lungcnn`'s INFO lines (sign-ins) would be dropped.
Run under systemd, standard error lands in the journal. Lines name files and sessions, never file contents or
patient data.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as logging's own last-resort handler does)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: int = logging.INFO) -> None:
    """Send `lungcnn.*` records at `level` and above to standard error, once per process."""
    root = logging.getLogger("lungcnn")
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
