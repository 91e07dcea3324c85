"""lungcnn: MobileNetV2 transfer learning for lung CT (benign vs malignant), calibrated and honest."""

__version__ = "0.1.0"
