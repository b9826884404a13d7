"""fkp: facial keypoint detection (Kaggle format) as a reproducible MLOps workflow."""

__version__ = "0.1.0"
