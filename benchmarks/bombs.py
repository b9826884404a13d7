"""Hostile inputs for the reliability checks: a PNG decompression bomb and a zip bomb.

Both are real files any decoder accepts: the PNG is a valid 8-bit gray image of ``side`` x
``side`` black pixels (30000 x 30000 fits in under 1 MB), the zip holds one entry of zeros
compressed about 1000:1. ``python -m benchmarks.bombs`` measures what ``fkp predict`` costs on
the PNG bomb (peak memory of the whole process, wall time) and prints one Markdown table row.

    python -m benchmarks.bombs --model models/model.keras
"""

from __future__ import annotations

import argparse
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: str | Path, side: int = 30000) -> Path:
    """A valid ``side`` x ``side`` 8-bit gray PNG of zeros, compressed row by row (little memory)."""
    path = Path(path)
    row = b"\0" * (side + 1)  # filter byte 0 + one row of black pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )
    return path


def write_zip_bomb(path: str | Path, member: str = "training.csv", size: int = 64 << 20) -> Path:
    """A zip whose one entry ``member`` is ``size`` zero bytes (compressed about 1000:1)."""
    path = Path(path)
    block = b"0" * (1 << 20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open(member, "w", force_zip64=True) as sink,
    ):
        for _ in range(size // len(block)):
            sink.write(block)
    return path


def measure_predict(model: str, photo: Path) -> dict:
    """Run ``fkp predict`` on ``photo`` in a child process: exit code, wall seconds, peak RSS (MB), stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fkp.cli", "predict", "--model", model, "--out", out, str(photo)],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "code": done.returncode,
        "seconds": seconds,
        "peak_mb": max(peak_kb, before) / 1024,
        "stderr": done.stderr.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--side", type=int, default=30000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bomb = write_png_bomb(Path(tmp) / "bomb.png", args.side)
        size_kb = os.path.getsize(bomb) / 1024
        result = measure_predict(args.model, bomb)
    print(
        f"| PNG bomb {args.side}x{args.side} ({size_kb:.0f} KB) | exit {result['code']} | "
        f"{result['seconds']:.1f} s | {result['peak_mb']:.0f} MB | {result['stderr'].splitlines()[-1]} |"
    )


if __name__ == "__main__":
    main()
