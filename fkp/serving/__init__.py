"""Serving: the MLflow pyfunc model, photos (face detection and crops) and ``fkp serve`` (web page + API)."""
