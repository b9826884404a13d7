"""The face grid: a PNG of the expected size for both image layouts, written atomically."""

from __future__ import annotations

import numpy as np
import pytest

from fkp.core.kaggle_csv import write_training
from fkp.core.plots import plot_face_grid, show_csv
from fkp.synthetic.sample import generate_sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def faces():
    data = generate_sample(6, 1, seed=0)
    return data.train_images, data.train_keypoints


def png_size(path) -> tuple[int, int]:
    import matplotlib.image

    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


def test_grid_of_uint8_faces(tmp_path, faces):
    images, keypoints = faces
    out = plot_face_grid(images, keypoints, tmp_path / "grid.png", n=4, ncols=2, title="four faces")
    assert out == tmp_path / "grid.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert png_size(out)[0] == 440  # 2 columns of 2.2 inches at 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_grid_with_predictions_and_model_input(tmp_path, faces):
    images, keypoints = faces
    floats = images[..., None].astype(np.float32) / 255.0
    predictions = np.nan_to_num(keypoints, nan=48.0) + 1.5
    out = plot_face_grid(floats, keypoints, tmp_path / "pred.png", predictions=predictions, n=16)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert png_size(out)[0] == 880  # fewer faces than n: all 6, in 4 columns


def test_grid_rejects_mismatched_keypoints(tmp_path, faces):
    images, keypoints = faces
    with pytest.raises(ValueError, match="keypoints"):
        plot_face_grid(images, keypoints[:3], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_show_csv(tmp_path, faces):
    images, keypoints = faces
    write_training(tmp_path / "training.csv", images, keypoints)
    out = show_csv(tmp_path / "training.csv", tmp_path / "show.png", n=3)
    assert out.read_bytes()[:8] == PNG_MAGIC
