"""``fkp serve``: a web page and a photo API for the keypoint model.

One module per job: :mod:`~fkp.web.limits` (what an upload may be, checked from its header
before any decoding), :mod:`~fkp.web.faces` (photo -> faces -> keypoints, pure),
:mod:`~fkp.web.model` (loading by MLflow URI or ``.keras`` file, hot swap when the alias
moves), :mod:`~fkp.web.metrics` (Prometheus), :mod:`~fkp.web.access_log` (one JSON line per
request), :mod:`~fkp.web.page` (the offline page and its example faces), :mod:`~fkp.web.app`
(the FastAPI routes) and :mod:`~fkp.web.server` (uvicorn). TensorFlow is imported only when
a model is loaded.
"""
