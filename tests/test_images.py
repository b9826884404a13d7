"""Image string parsing: exact round trip and located errors for every kind of bad row."""

from __future__ import annotations

import numpy as np
import pytest

from fkp.core.images import format_images, parse_images, to_model_input
from fkp.errors import DataError


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 96, 96), dtype=np.uint8)


def test_round_trip_is_exact_across_chunks():
    images = _images(300)  # more than one parsing chunk
    images[0, 0, :4] = [0, 9, 10, 255]  # one-, two- and three-digit edge values
    assert np.array_equal(parse_images(format_images(images)), images)


def test_naive_parser_agrees():
    images = _images(3, seed=1)
    fields = format_images(images)
    naive = np.stack([np.array(s.split(), dtype=np.float64) for s in fields]).reshape(3, 96, 96)
    assert np.array_equal(parse_images(fields).astype(np.float64), naive)


def test_model_input_is_scaled_float_with_channel():
    x = to_model_input(np.full((2, 96, 96), 255, dtype=np.uint8))
    assert x.shape == (2, 96, 96, 1) and x.dtype == np.float32 and x.max() == 1.0


def _bad(field_maker) -> list[str]:
    fields = format_images(_images(5, seed=2))
    fields[3] = field_maker(fields[3])
    return fields


@pytest.mark.parametrize(
    ("maker", "needle"),
    [
        (lambda s: s.rsplit(" ", 1)[0], "9215 pixel values"),
        (lambda s: s + " 7", "9217 pixel values"),
        (lambda s: s.replace(" ", " 12.5 ", 1).rsplit(" ", 1)[0], "'12.5'"),
        (lambda s: "-3 " + s.split(" ", 1)[1], "'-3'"),
        (lambda s: "256 " + s.split(" ", 1)[1], "'256'"),
        (lambda s: "999 " + s.split(" ", 1)[1], "'999'"),
        (lambda s: "1000 " + s.split(" ", 1)[1], "'1000'"),
        (lambda s: "", "empty Image"),
    ],
)
def test_bad_field_names_file_row_and_column(maker, needle):
    with pytest.raises(DataError) as err:
        parse_images(_bad(maker), file="training.csv", first_row=1)
    message = str(err.value)
    assert needle in message
    assert "training.csv" in message and "row 4 (line 5)" in message and "'Image'" in message
    assert err.value.row == 4 and err.value.column == "Image"
