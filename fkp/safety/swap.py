"""Replace a folder as a whole, so outputs that belong together are never mixed old and new.

The new content is written into a sibling temporary folder (:func:`staging_dir`), then the two
folders trade places with one ``renameat2(RENAME_EXCHANGE)`` call (Linux), which is atomic: a
reader, a crash or a kill sees either the complete old set or the complete new set. Where that
call is missing, two renames are used and the window between them is reported in the docs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from fkp.safety.owner import token

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@cache
def _renameat2():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (both must exist); False when the system cannot."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a))


@contextlib.contextmanager
def staging_dir(target: str | Path, *, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty sibling folder of ``target``; on success it replaces ``target`` as a whole.

    Files named in ``keep`` that ``target`` holds but the body did not write (outputs of other
    steps sharing the folder) are carried over as hard links (copies across file systems). On any
    exception the staging folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.{token()}.", dir=target.parent))
    try:
        yield stage
        for name in keep:
            old, new = target / name, stage / name
            if old.is_file() and not new.exists():
                try:
                    os.link(old, new)
                except OSError:
                    shutil.copy2(old, new)
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get normal permissions
        replace_dir(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of ``target``; the old content ends up in ``new`` (caller removes it)."""
    if not target.exists():
        os.rename(new, target)
        new.mkdir()  # keep the caller's contract: ``new`` exists and holds the old content (none)
        return
    if exchange(new, target):
        return
    backup = target.with_name(f".{target.name}.{token()}.old")
    os.rename(target, backup)
    os.rename(new, target)
    os.rename(backup, new)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
