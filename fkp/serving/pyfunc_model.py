"""The served keypoint model, logged as code (MLflow models-from-code) instead of a pickle.

MLflow runs this file to build the model when it loads it, so what runs in the server is this
source, shipped with the model, and never unpickled bytes from the artifact store.
"""

from mlflow.models import set_model

from fkp.serving.pyfunc import KeypointPyfunc

set_model(KeypointPyfunc())
