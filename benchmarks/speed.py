"""Benchmark: CPU inference speed of a saved model, per batch size.

For batches of 1, 32 and 1,000 images it reports images/s and the p50/p99 latency per
image, for the plain forward pass and for flip test-time averaging (two passes), through
a ``tf.function`` with a fixed input signature (the fast path), and for batches of 1 and
32 through ``model.predict`` (Keras' convenience path, which pays a per-call overhead).

    python -m benchmarks.speed --model models/model.keras
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 32, 1000)


def _timings(fn, x: np.ndarray, seconds: float, min_calls: int) -> np.ndarray:
    fn(x)  # warm-up (tracing, memory)
    out, start = [], time.perf_counter()
    while len(out) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def measure(fn, batch: int, *, seconds: float = 3.0) -> dict[str, float]:
    """Images/s and per-image latency percentiles of ``fn`` on a random batch."""
    x = np.random.default_rng(0).random((batch, 96, 96, 1), dtype=np.float32)
    t = _timings(fn, x, seconds, min_calls=5 if batch >= 1000 else 20)
    per_image = t / batch
    return {
        "batch": batch,
        "images_per_s": float(batch / np.median(t)),
        "p50_ms": float(np.percentile(per_image, 50) * 1e3),
        "p99_ms": float(np.percentile(per_image, 99) * 1e3),
        "calls": int(len(t)),
    }


def fast_paths(model) -> dict:
    """The paths fkp predicts with: the compiled forward pass, plain and flip-averaged."""
    from fkp.core.inference import compile_predictor
    from fkp.core.models import model_mirror_x

    mirror_x = model_mirror_x(model)
    return {
        "tf.function": compile_predictor(model, tta_flip=False, mirror_x=mirror_x),
        "tf.function + flip TTA": compile_predictor(model, tta_flip=True, mirror_x=mirror_x),
    }


def inference_report(model_path: str | Path, *, seconds: float = 3.0) -> dict:
    """All speed figures for one saved model, plus its size."""
    import keras

    import fkp.core.models  # noqa: F401  (registers custom layers)

    model = keras.models.load_model(model_path)
    results = {
        name: [measure(fn, b, seconds=seconds) for b in BATCHES] for name, fn in fast_paths(model).items()
    }
    # Keras' convenience path, for contrast: its per-call overhead dominates small batches
    results["model.predict"] = [
        measure(lambda x: model.predict(x, batch_size=len(x), verbose=0), b, seconds=seconds) for b in (1, 32)
    ]
    return {
        "model": str(model_path),
        "params": int(model.count_params()),
        "size_mb": Path(model_path).stat().st_size / 1e6,
        "paths": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    print(json.dumps(inference_report(args.model, seconds=args.seconds), indent=2))


if __name__ == "__main__":
    main()
