"""What the launcher configs in conf/hydra/launcher/ need from our side."""

from __future__ import annotations

import warnings


def quiet_schema_matching() -> None:
    """Silence Hydra's deprecation note on our launcher configs.

    `conf/hydra/launcher/joblib.yaml` (and the submitit ones) share the plugins' names so `hydra/launcher=joblib`
    picks ours; Hydra then checks each against the plugin's schema of that name (typos in a field stop the run,
    which we want) and warns, on every run and in every job, that this matching is deprecated.
    """
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
                            category=UserWarning)
