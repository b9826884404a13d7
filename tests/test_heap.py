"""The serving process keeps freed memory for the next photo (fkp.serving.heap)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# A fresh process fills and frees a 10 MB buffer (one photo's buffers) and prints how much of it
# is still resident: memory given back to the kernel after one photo has to be faulted in again
# for the next, memory kept is not.
_ONE_PHOTO = """
import sys
import numpy as np
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "kept":
    from fkp.serving.heap import keep_freed_memory
    assert keep_freed_memory()
before = resident_mb()
np.ones(10 << 20, np.uint8)
print(resident_mb() - before)
"""


def _kept_after_one_photo_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _ONE_PHOTO, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


def test_memory_freed_after_a_photo_is_kept_for_the_next():
    assert _kept_after_one_photo_mb("adaptive") < 2  # glibc's own thresholds: given back at once
    assert _kept_after_one_photo_mb("kept") > 9
