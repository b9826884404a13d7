"""The single offline page (``GET /``) with its example faces baked in.

The page is one HTML file with inline CSS and script and no external assets, so it works
without internet. The examples are synthetic faces from :mod:`fkp.synthetic.sample` (license-free,
deterministic), embedded as PNG data URIs; each is a 96x96 model input, which the API takes
as a face crop.
"""

from __future__ import annotations

import base64
import functools
import json
from importlib import resources

import cv2

#: How many example faces the page offers, and from which synthetic sample.
N_EXAMPLES = 4
EXAMPLE_SEED = 11
_PLACEHOLDER = "/*FKP_EXAMPLES*/[]"


def example_faces(n: int = N_EXAMPLES, seed: int = EXAMPLE_SEED) -> list[str]:
    """``n`` synthetic 96x96 faces as ``data:image/png;base64,...`` URIs."""
    from fkp.synthetic.sample import generate_sample

    images = generate_sample(n, 1, seed, workers=1).train_images[:n]
    uris = []
    for image in images:
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError("cannot encode an example face as PNG")
        uris.append("data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii"))
    return uris


@functools.cache
def page_html() -> str:
    """The page, examples included (built once per process)."""
    template = resources.files("fkp.serving.web").joinpath("static/index.html").read_text(encoding="utf-8")
    if _PLACEHOLDER not in template:
        raise RuntimeError(f"fkp/serving/web/static/index.html lost its {_PLACEHOLDER} placeholder")
    return template.replace(_PLACEHOLDER, json.dumps(example_faces()))
