"""Fast conversion between Kaggle ``Image`` strings and pixel arrays.

An ``Image`` field is 9216 space-separated integers 0..255. Parsing 7049 of them one
``np.fromstring`` call at a time costs ~10 s; here each chunk of rows is parsed as one
byte buffer with vectorised NumPy, which is several times faster and still names the
row of the first bad token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fkp.core.keypoints import IMAGE_COLUMN, IMAGE_SIZE, N_PIXELS
from fkp.errors import DataError

_SPACE, _NEWLINE, _ZERO, _NINE = 32, 10, 48, 57
_CHUNK_ROWS = 128


def parse_images(
    fields: Sequence[object],
    *,
    file: str | Path | None = None,
    first_row: int = 1,
) -> np.ndarray:
    """Parse ``Image`` fields into a ``(m, 96, 96)`` uint8 array.

    Raises :class:`DataError` naming the file, row and column for a missing field, a
    non-integer token, a value outside 0..255 or a count other than 9216.
    """
    out = np.empty((len(fields), N_PIXELS), dtype=np.uint8)
    for start in range(0, len(fields), _CHUNK_ROWS):
        chunk = fields[start : start + _CHUNK_ROWS]
        out[start : start + len(chunk)] = _parse_chunk(chunk, file=file, first_row=first_row + start)
    return out.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _parse_chunk(fields: Sequence[object], *, file: str | Path | None, first_row: int) -> np.ndarray:
    for i, field in enumerate(fields):
        if not isinstance(field, str) or not field.strip():
            raise DataError("empty Image field", file=file, row=first_row + i, column=IMAGE_COLUMN)
    # three leading spaces let the digit look-behind below run without bounds checks
    text = "   " + "\n".join(fields) + "\n"
    buf = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    newlines = np.flatnonzero(buf == _NEWLINE)
    digits = buf - np.uint8(_ZERO)  # wraps around for non-digits, so one compare finds digits
    is_digit = digits < 10
    n_valid = np.count_nonzero(is_digit) + np.count_nonzero(buf == _SPACE) + len(newlines)
    if n_valid != len(buf):
        _raise_bad_token(text[3:], file=file, first_row=first_row)
    # a token ends at a digit followed by a non-digit (the buffer ends with a newline)
    ends = np.flatnonzero(is_digit[:-1] > is_digit[1:])
    counts = np.diff(np.searchsorted(ends, newlines), prepend=0)
    wrong = np.flatnonzero(counts != N_PIXELS)
    if wrong.size:
        i = int(wrong[0])
        raise DataError(
            f"{int(counts[i])} pixel values, expected {N_PIXELS} (96 x 96)",
            file=file,
            row=first_row + i,
            column=IMAGE_COLUMN,
        )
    has_tens = is_digit[ends - 1]
    has_hundreds = has_tens & is_digit[ends - 2]
    values = digits[ends].astype(np.uint16)
    values += digits[ends - 1] * has_tens.astype(np.uint16) * 10
    values += digits[ends - 2] * has_hundreds.astype(np.uint16) * 100
    over = (values > 255) | (has_hundreds & is_digit[ends - 3])
    if over.any():
        k = int(np.argmax(over))
        row = int(np.searchsorted(newlines, ends[k]))
        token = text.split("\n")[row].split()[k - row * N_PIXELS]
        raise DataError(
            f"pixel value {token[:20]!r} outside 0..255",
            file=file,
            row=first_row + row,
            column=IMAGE_COLUMN,
        )
    return values.astype(np.uint8).reshape(len(fields), N_PIXELS)


def _raise_bad_token(text: str, *, file: str | Path | None, first_row: int) -> None:
    """Slow path, only on error: find the first token that is not a plain integer."""
    for i, line in enumerate(text.split("\n")):
        for token in line.split(" "):
            if token and not (token.isascii() and token.isdigit()):
                raise DataError(
                    f"non-integer pixel value {token[:20]!r} (pixels must be integers 0..255)",
                    file=file,
                    row=first_row + i,
                    column=IMAGE_COLUMN,
                )
    raise DataError(
        "unexpected separator in Image (only single spaces are allowed)",
        file=file,
        row=first_row,
        column=IMAGE_COLUMN,
    )


_TOKENS = np.array([str(v) for v in range(256)], dtype=object)


def format_images(images: np.ndarray) -> list[str]:
    """Render ``(m, 96, 96)`` uint8 pixels as Kaggle ``Image`` strings."""
    flat = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    return [" ".join(_TOKENS[row]) for row in flat]


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(m, 96, 96)`` -> float32 ``(m, 96, 96, 1)`` scaled to 0..1, as the seed feeds its CNN."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[..., None]


@dataclass(frozen=True)
class ImageTokenStats:
    """Per-row facts about ``Image`` fields, cheap enough to compute for a whole file.

    Validation checks these small columns instead of 230 MB of pixel text.
    ``minimum``/``maximum`` cover the integer tokens only (NaN when a row has none);
    ``first_bad`` is the first token that is not an integer, or None.
    """

    n_tokens: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    first_bad: np.ndarray


_MINUS = 45


def image_token_stats(fields: Sequence[object]) -> ImageTokenStats:
    """Count the tokens of each ``Image`` field and find its smallest and largest integer.

    A token is a run of characters between spaces. Like :func:`parse_images` it works on
    one byte buffer per chunk of rows, so a clean file costs about as much as parsing it
    and a broken one (decimals, signs, letters in every row) not much more.
    """
    m = len(fields)
    n_tokens = np.zeros(m, dtype=np.int64)
    minimum = np.full(m, np.nan)
    maximum = np.full(m, np.nan)
    first_bad = np.full(m, None, dtype=object)
    for start in range(0, m, _CHUNK_ROWS):
        chunk = [f if isinstance(f, str) else "" for f in fields[start : start + _CHUNK_ROWS]]
        rows = slice(start, start + len(chunk))
        _chunk_stats(chunk, n_tokens[rows], minimum[rows], maximum[rows], first_bad[rows])
    return ImageTokenStats(n_tokens=n_tokens, minimum=minimum, maximum=maximum, first_bad=first_bad)


def _chunk_stats(
    fields: list[str], n_tokens: np.ndarray, minimum: np.ndarray, maximum: np.ndarray, first_bad: np.ndarray
) -> None:
    """Fill the four per-row stats of one chunk in place."""
    text = "   " + "\n".join(fields) + "\n"  # leading spaces: look-behinds need no bounds checks
    safe = text  # a line break inside a field would split its row: make it an ordinary bad character
    if text.count("\n") != len(fields):
        safe = "   " + "\n".join(f.replace("\n", "\0") for f in fields) + "\n"
    buf = np.frombuffer(safe.encode("ascii", errors="replace"), dtype=np.uint8)  # one byte per character
    newlines = np.flatnonzero(buf == _NEWLINE)
    digits = buf - np.uint8(_ZERO)  # wraps around for non-digits, so one compare finds digits
    is_digit = digits < 10
    plain = np.count_nonzero(is_digit) + np.count_nonzero(buf == _SPACE) + len(newlines) == len(buf)
    if plain:  # only digits and separators: tokens are digit runs
        ends = np.flatnonzero(is_digit[:-1] > is_digit[1:])
    else:
        sep = (buf == _SPACE) | (buf == _NEWLINE)
        ends = np.flatnonzero(~sep[:-1] & sep[1:])
    has_tens = is_digit[ends - 1]
    has_hundreds = has_tens & is_digit[ends - 2]
    exact = has_hundreds & is_digit[ends - 3]  # four or more digits
    values = digits[ends].astype(np.uint16)
    values += digits[ends - 1] * has_tens.astype(np.uint16) * 10
    values += digits[ends - 2] * has_hundreds.astype(np.uint16) * 100
    values = values.astype(np.float64)
    integer = np.ones(len(ends), dtype=bool)
    if not plain:
        odd = np.flatnonzero(~is_digit & ~sep)
        token = np.searchsorted(ends, odd)
        sign = (buf[odd] == _MINUS) & sep[odd - 1] & is_digit[odd + 1]  # a leading minus before digits
        integer[token[~sign]] = False
        exact[token[sign]] = True
    for k in np.flatnonzero(exact & integer):  # rare (signs, long numbers): read exactly
        values[k] = float(_token(text, safe, int(ends[k])))  # float: no digit limit, huge becomes inf
    counts = np.diff(np.searchsorted(ends, newlines), prepend=0)
    n_tokens[:] = counts
    if plain:
        _per_row(counts, values, np.minimum, minimum)
        _per_row(counts, values, np.maximum, maximum)
        return
    _per_row(counts, np.where(integer, values, np.inf), np.minimum, minimum)
    _per_row(counts, np.where(integer, values, -np.inf), np.maximum, maximum)
    row_of_token = np.searchsorted(newlines, ends)
    no_integer = np.bincount(row_of_token[integer], minlength=len(fields)) == 0
    minimum[no_integer] = maximum[no_integer] = np.nan
    bad = np.flatnonzero(~integer)
    bad_rows, first_of_row = np.unique(row_of_token[bad], return_index=True)
    for r, k in zip(bad_rows, bad[first_of_row], strict=True):
        first_bad[r] = _token(text, safe, int(ends[k]))[:20]


def _token(text: str, safe: str, end: int) -> str:
    """The token of ``text`` ending at index ``end``; ``safe`` is ``text`` with only row breaks left."""
    start = max(safe.rfind(" ", 0, end), safe.rfind("\n", 0, end)) + 1
    return text[start : end + 1]


def _per_row(counts: np.ndarray, values: np.ndarray, ufunc: np.ufunc, out: np.ndarray) -> None:
    """``out[r] = ufunc`` over row r's values (tokens are in row order); rows without tokens stay."""
    filled = counts > 0
    if filled.any():
        row_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out[filled] = ufunc.reduceat(values, row_starts[filled])
