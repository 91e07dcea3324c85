"""Post-hoc calibration (temperature scaling, isotonic) and threshold choice from a sensitivity target."""

from lungcnn.calibration.isotonic import fit_isotonic
from lungcnn.calibration.temperature import TemperatureFit, fit_temperature
from lungcnn.calibration.threshold import threshold_for_sensitivity
from lungcnn.spec import apply_isotonic  # applying a map is the spec's; re-exported beside fit_isotonic

__all__ = [
    "TemperatureFit",
    "apply_isotonic",
    "fit_isotonic",
    "fit_temperature",
    "threshold_for_sensitivity",
]
