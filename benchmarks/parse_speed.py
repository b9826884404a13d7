"""Benchmark: parsing Kaggle ``Image`` strings, fkp's parser vs the naive per-row apply.

Writes a full-size training.csv (7049 rows, like Kaggle's ~230 MB file) unless one is
given, then times:

- naive: ``df.Image.apply(lambda s: np.fromstring(s, sep=' '))`` (the classic recipe),
- fkp:   ``fkp.core.images.parse_images`` on the same strings,
- the whole ``read_training`` (CSV + parse) and loading the prepared ``.npz`` cache.

    python -m benchmarks.parse_speed [--csv training.csv] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fkp.core.images import parse_images
from fkp.core.kaggle_csv import read_training, write_training
from fkp.stages.prepare import load_train, save_train

FULL_ROWS = 7049


def _best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _full_size_csv(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    # smooth-ish pixels so the digit-length mix resembles photos, not uniform noise
    base = rng.integers(0, 256, size=(FULL_ROWS, 1, 1), dtype=np.int16)
    noise = rng.integers(-60, 60, size=(FULL_ROWS, 96, 96), dtype=np.int16)
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    keypoints = rng.uniform(5, 90, size=(FULL_ROWS, 30)).astype(np.float32)
    path = folder / "training.csv"
    write_training(path, images, keypoints)
    return path


def measure_parse(csv: Path | None = None, repeat: int = 3) -> dict[str, float]:
    """Seconds for the naive parse, fkp's parse, the whole CSV read and the cache load."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = csv or _full_size_csv(Path(tmp))
        fields = pd.read_csv(csv, usecols=["Image"], dtype=str)["Image"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            naive = _best_of(repeat, lambda: fields.apply(lambda s: np.fromstring(s, sep=" ")))
        strings = fields.tolist()
        fast = _best_of(repeat, lambda: parse_images(strings))
        whole = _best_of(repeat, lambda: read_training(csv))
        npz = Path(tmp) / "train.npz"
        save_train(npz, read_training(csv))
        cache = _best_of(repeat, lambda: load_train(npz))
        size_mb = csv.stat().st_size / 1e6
    return {
        "rows": len(strings),
        "size_mb": size_mb,
        "naive_s": naive,
        "fkp_s": fast,
        "speedup": naive / fast,
        "read_training_s": whole,
        "cache_load_s": cache,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="a Kaggle-format training.csv (default: generate 7049 rows)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = measure_parse(args.csv, args.repeat)
    print(f"{r['rows']} rows, {r['size_mb']:.0f} MB (best of {args.repeat})")
    print(f"naive apply(np.fromstring):    {r['naive_s']:6.2f} s")
    print(f"fkp parse_images:              {r['fkp_s']:6.2f} s   ({r['speedup']:.1f}x faster)")
    print(f"fkp read_training (CSV+parse): {r['read_training_s']:6.2f} s")
    print(f"prepared .npz cache load:      {r['cache_load_s']:6.2f} s")


if __name__ == "__main__":
    main()
