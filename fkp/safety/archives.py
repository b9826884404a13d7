"""Extract a user's zip archive only after checking it is not hostile or damaged.

Before any byte is extracted the whole table of contents is checked: entry names (no absolute
paths, no ``..``, no symbolic links), the number of entries, each entry's declared size and
compression ratio (zip bombs), and the declared total. While extracting, a damaged entry (bad
CRC, truncated data) stops with a one-line :class:`~fkp.errors.DataError` naming the user's
archive (``label``) and the entry, never the temporary folder it was being extracted into.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fkp.errors import DataError

_MIB = 1 << 20


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
    return None


def check_members(infos: list[zipfile.ZipInfo], label: str, limits: ArchiveLimits) -> None:
    """Refuse the archive (naming ``label`` and the entry) if its table of contents breaks a limit."""
    if len(infos) > limits.max_members:
        raise DataError(f"holds {len(infos)} entries, above the limit of {limits.max_members}", file=label)
    total = 0
    for info in infos:
        name = info.filename
        if (why := unsafe_name(name)) is not None:
            raise DataError(f"entry {name!r} {why}: refused", file=label)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"entry {name!r} is a symbolic link: refused", file=label)
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
        total += info.file_size
    if total > limits.max_total_bytes:
        raise DataError(
            f"unpacks to {total:,} bytes, above the limit of {limits.max_total_bytes:,}", file=label
        )


def extract(archive: Path, dest: Path, label: str, limits: ArchiveLimits) -> list[Path]:
    """Check and extract ``archive`` into ``dest``; the extracted files, in archive order."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as error:
        raise DataError(
            f"not a readable zip archive (truncated or damaged: {error}); download it again", file=label
        ) from None
    out = []
    with zf:
        infos = zf.infolist()
        check_members(infos, label, limits)
        for info in infos:
            target = dest / PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _MIB)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
                raise DataError(
                    f"entry {info.filename!r} is damaged ({error}); download the archive again", file=label
                ) from None
            out.append(target)
    return out
