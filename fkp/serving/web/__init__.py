"""``fkp serve``: a web page and a photo API for the keypoint model.

One module per job: :mod:`~fkp.serving.web.limits` (what an upload may be, checked from its header
before any decoding), :mod:`~fkp.serving.web.faces` (photo -> faces -> keypoints, pure),
:mod:`~fkp.serving.web.model` (loading by MLflow URI or ``.keras`` file, hot swap when the alias
moves), :mod:`~fkp.serving.web.metrics` (Prometheus), :mod:`~fkp.serving.web.access_log` (one JSON line per
request), :mod:`~fkp.serving.web.page` (the offline page and its example faces), :mod:`~fkp.serving.web.app`
(the FastAPI routes) and :mod:`~fkp.serving.web.server` (uvicorn). TensorFlow is imported only when
a model is loaded.
"""
