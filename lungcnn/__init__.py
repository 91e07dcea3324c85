"""lungcnn: MobileNetV2 transfer learning for lung CT (benign vs malignant), calibrated and honest.

The library is the packages below; the commands are `lungcnn.cli` (`lungcnn <command>`). The older command
forms `python -m lungcnn.<command>` keep working: the names in `COMMAND_ALIASES` resolve to the cli modules
(strings only, so importing lungcnn imports no command).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# Hydra's configs, the user's API, by absolute path: a relative config_path would resolve against the calling
# module's package when a command runs as an installed script, where the repository's conf/ is not a package.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

COMMAND_ALIASES = {
    "lungcnn.train": "lungcnn.cli.train",
    "lungcnn.calibrate": "lungcnn.cli.calibrate",
    "lungcnn.evaluate": "lungcnn.cli.evaluate",
    "lungcnn.predict": "lungcnn.cli.predict",
    "lungcnn.export": "lungcnn.cli.export",
    "lungcnn.cv": "lungcnn.cli.cv",
    "lungcnn.publish": "lungcnn.cli.publish",
    "lungcnn.audit": "lungcnn.cli.audit",
    "lungcnn.doctor": "lungcnn.cli.doctor",
    "lungcnn.sweep_report": "lungcnn.cli.sweep_report",
    "lungcnn.webapp.launch": "lungcnn.cli.app",
    "lungcnn.webapp.password": "lungcnn.cli.app_password",
    "lungcnn.data.synthetic.__main__": "lungcnn.cli.synthetic",
}


class _CommandAliasFinder(importlib.abc.MetaPathFinder):
    """Finds `lungcnn.train` & co. as their cli module's file, so `python -m lungcnn.train` runs `lungcnn.cli.train`."""

    def find_spec(self, name, path=None, target=None):
        target_name = COMMAND_ALIASES.get(name)
        if target_name is None:
            return None
        origin = importlib.util.find_spec(target_name)
        return importlib.util.spec_from_file_location(name, origin.origin) if origin and origin.origin else None


if not any(isinstance(f, _CommandAliasFinder) for f in sys.meta_path):
    sys.meta_path.append(_CommandAliasFinder())
