"""Extract a user's zip archive only after checking it is not hostile or damaged.

Before any byte is extracted the whole table of contents is checked: entry names (no absolute
paths, no ``..``, no name part longer than a file system takes, no file that is also a folder),
entry types (regular files and folders only: no symbolic links, pipes or devices), the number of
entries, each entry's declared size and compression ratio (zip bombs), and the declared total of
the entries the caller keeps, added to what the same import already extracted (so a zip of zips
shares one budget). Only the kept entries are extracted, each under a name the caller chooses in
a folder of its own, so the archive's folder layout never meets the file system. While
extracting, a damaged entry (bad CRC, truncated data) stops with a one-line
:class:`~fkp.errors.DataError` naming the user's archive (``label``) and the entry, never the
temporary folder it was being extracted into.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fkp.errors import DataError

_MIB = 1 << 20
#: the longest file or folder name Linux, macOS and Windows file systems accept (bytes, UTF-8)
NAME_MAX = 255
_TYPES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}

#: maps an entry name to the file name to extract it as, or ``None`` to leave it in the archive
Keep = Callable[[str], "str | None"]


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 100
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_ratio: float = 200.0

    @classmethod
    def from_params(cls, limits) -> ArchiveLimits:
        """From the ``limits`` section of the params (:class:`fkp.params.LimitsParams`)."""
        return cls(
            limits.zip_max_members,
            limits.zip_max_member_bytes,
            limits.zip_max_total_bytes,
            limits.zip_max_ratio,
        )


def unsafe_name(name: str) -> str | None:
    """Why an entry name would write outside the extraction folder, or ``None`` if it is safe."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        return "is an absolute path"
    if ".." in path.parts:
        return "climbs out of the archive ('..')"
    if any(len(part.encode()) > NAME_MAX for part in path.parts):
        return f"has a name part longer than {NAME_MAX} bytes"
    return None


def _folders(name: str) -> list[str]:
    """The folders an entry name lies in (``a/b/c.txt`` -> ``a``, ``a/b``)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _file_name(info: zipfile.ZipInfo) -> str:
    return "/".join(PurePosixPath(info.filename.replace("\\", "/")).parts)


def check_members(
    infos: list[zipfile.ZipInfo],
    label: str,
    limits: ArchiveLimits,
    keep: Keep = lambda name: name,
    spent: int = 0,
) -> None:
    """Refuse the archive (naming ``label`` and the entry) if its table of contents breaks a limit.

    The total counts the entries ``keep`` keeps, on top of the ``spent`` bytes the same import
    already extracted.
    """
    if len(infos) > limits.max_members:
        raise DataError(f"holds {len(infos)} entries, above the limit of {limits.max_members}", file=label)
    files = {_file_name(info): info.filename for info in infos if not info.is_dir()}
    total = spent
    for info in infos:
        name = info.filename
        if (why := unsafe_name(name)) is not None:
            raise DataError(f"entry {name!r} {why}: refused", file=label)
        if not info.is_dir() and not _file_name(info).strip("./"):
            raise DataError(f"entry {name!r} has no file name: refused", file=label)
        kind = _TYPES.get(stat.S_IFMT(info.external_attr >> 16))
        if kind is not None:
            raise DataError(f"entry {name!r} is {kind}, not a file: refused", file=label)
        if (folder := next((f for f in _folders(name) if f in files), None)) is not None:
            raise DataError(
                f"entry {files[folder]!r} is a file and also the folder of entry {name!r}: refused",
                file=label,
            )
        if info.file_size > limits.max_member_bytes:
            raise DataError(
                f"entry {name!r} unpacks to {info.file_size:,} bytes, above the limit of "
                f"{limits.max_member_bytes:,}",
                file=label,
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _MIB and ratio > limits.max_ratio:
            raise DataError(
                f"entry {name!r} is compressed {ratio:,.0f}:1, above the limit of {limits.max_ratio:g}:1 "
                "(a zip bomb?)",
                file=label,
            )
        if not info.is_dir() and keep(name) is not None:
            total += info.file_size
    if total > limits.max_total_bytes:
        already = f" with the {spent:,} already unpacked by this import" if spent else ""
        raise DataError(
            f"unpacks to {total - spent:,} bytes{already}, above the limit of {limits.max_total_bytes:,} "
            "(limits.zip_max_total_bytes in params.yaml)",
            file=label,
        )


def extract(
    archive: Path | BinaryIO, dest: Path, label: str, limits: ArchiveLimits, keep: Keep, spent: int = 0
) -> list[tuple[Path, str]]:
    """Check ``archive``, then extract the entries ``keep`` names into folders of their own in ``dest``.

    Returns each extracted file with its entry name, in archive order. ``spent`` is what the same
    import already extracted: the archive's kept entries must fit in what is left of the budget.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as error:
        raise DataError(
            f"not a readable zip archive (truncated or damaged: {error}); download it again", file=label
        ) from None
    out = []
    with zf:
        infos = zf.infolist()
        check_members(infos, label, limits, keep, spent)
        for index, info in enumerate(infos):
            if info.is_dir() or (name := keep(info.filename)) is None:
                continue
            target = dest / str(index) / name
            target.parent.mkdir()
            try:
                with zf.open(info) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _MIB)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
                raise DataError(
                    f"entry {info.filename!r} is damaged ({error}); download the archive again", file=label
                ) from None
            out.append((target, info.filename))
    return out
