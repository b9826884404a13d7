"""Pictures for people: faces with their keypoints, and (elsewhere in this module) training plots.

Matplotlib is imported inside each function with the Agg backend, so importing this
module is cheap and works without a display. Every PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fkp.atomic import atomic_path
from fkp.core.keypoints import IMAGE_SIZE

TRUE_STYLE = {"c": "lime", "marker": "o", "s": 10, "edgecolors": "black", "linewidths": 0.3}
PRED_STYLE = {"c": "red", "marker": "x", "s": 14, "linewidths": 0.9}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_gray(images: np.ndarray) -> np.ndarray:
    """(m, 96, 96) uint8 or (m, 96, 96, 1) floats in 0..1 -> (m, 96, 96) floats in 0..1."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (m, 96, 96) or (m, 96, 96, 1), got {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _points(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(30,) coordinates -> x, y of the labelled keypoints (NaN ones dropped)."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    keep = ~np.isnan(xy).any(axis=1)
    return xy[keep, 0], xy[keep, 1]


def plot_face_grid(
    images: np.ndarray,
    keypoints: np.ndarray | None,
    out_png: str | Path,
    *,
    predictions: np.ndarray | None = None,
    n: int = 16,
    ncols: int = 4,
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Draw up to ``n`` faces (a random, seeded choice when there are more) with their keypoints.

    ``keypoints`` / ``predictions`` are (m, 30) in Kaggle column order; NaN means unlabelled
    and is simply not drawn. True points are green dots, predictions red crosses.
    """
    gray = _as_gray(images)
    m = len(gray)
    if m == 0:
        raise ValueError("no images to draw")
    for name, arr in (("keypoints", keypoints), ("predictions", predictions)):
        if arr is not None and np.shape(arr) != (m, 30):
            raise ValueError(f"{name} must have shape ({m}, 30), got {np.shape(arr)}")
    chosen = np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False)) if m > n else np.arange(m)
    ncols = max(1, min(ncols, len(chosen)))
    nrows = -(-len(chosen) // ncols)

    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows + (0.4 if title else 0)))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, chosen, strict=False):
        ax.imshow(gray[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if keypoints is not None:
            ax.scatter(*_points(keypoints[i]), label="true", **TRUE_STYLE)
        if predictions is not None:
            ax.scatter(*_points(predictions[i]), label="predicted", **PRED_STYLE)
        ax.set_xlim(-0.5, IMAGE_SIZE - 0.5)
        ax.set_ylim(IMAGE_SIZE - 0.5, -0.5)
        ax.set_title(f"#{i}", fontsize=7, pad=2)
    if predictions is not None:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if predictions is not None else 0, 1, 1))
    return _save(fig, out_png)


def _save(fig, out_png: str | Path) -> Path:
    """Write ``fig`` as PNG atomically and free it (figures pile up in long runs otherwise)."""
    out = Path(out_png)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        _pyplot().close(fig)
    return out


def show_csv(training_csv: str | Path, out_png: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Read a Kaggle training.csv and draw ``n`` of its faces with their labels."""
    from fkp.core.kaggle_csv import read_training

    data = read_training(training_csv)
    complete = int((~np.isnan(data.keypoints).any(axis=1)).sum())
    title = f"{Path(training_csv).name}: {len(data.images)} faces, {complete} with all 15 keypoints"
    return plot_face_grid(data.images, data.keypoints, out_png, n=n, seed=seed, title=title)


def plot_learning_curves(history_csv: str | Path, out_png: str | Path) -> Path:
    """Training loss and validation RMSE (px) per epoch, with the best epoch marked."""
    import pandas as pd

    plt = _pyplot()
    history = pd.read_csv(history_csv)
    fig, (ax_loss, ax_rmse) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(history["epoch"], history["loss"], label="train loss")
    if "val_loss" in history:
        ax_loss.plot(history["epoch"], history["val_loss"], label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend()
    ax_rmse.plot(history["epoch"], history["val_rmse"], color="tab:red", label="val RMSE")
    best = int(history["val_rmse"].idxmin())
    ax_rmse.scatter(history["epoch"][best], history["val_rmse"][best], color="black", zorder=3)
    ax_rmse.annotate(
        f"best {history['val_rmse'][best]:.2f} px (epoch {history['epoch'][best]})",
        (history["epoch"][best], history["val_rmse"][best]),
        textcoords="offset points",
        xytext=(-10, 10),
        ha="right",
    )
    ax_rmse.set(xlabel="epoch", ylabel="px", title="validation RMSE (observed labels)")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_rmse_bars(rmse_by_name: dict[str, float], out_png: str | Path, *, title: str) -> Path:
    """Horizontal bars of RMSE (px) per keypoint or per distortion, worst at the top, values written."""
    plt = _pyplot()
    items = sorted(rmse_by_name.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.23 * len(items)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xlabel="RMSE (px)", title=title)
    fig.tight_layout()
    return _save(fig, out_png)
