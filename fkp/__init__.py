"""fkp: facial keypoint detection (Kaggle format) as a reproducible MLOps workflow."""

from fkp import quiet as _quiet

__version__ = "0.1.0"

# before any fkp module imports TensorFlow or MLflow, whichever entrypoint imports fkp first
_quiet.install()
