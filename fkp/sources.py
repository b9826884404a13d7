"""The two ways real Kaggle data gets in: the Kaggle API, or files a user downloaded.

Either way the files are checked (right names, sane sizes, text, right header; zips against the
limits of :mod:`fkp.safety.archives`), copied into ``data/raw/kaggle/`` through a temporary folder
(a bad input never leaves a half-copied folder behind) and tracked with ``dvc add``, so git only
ever sees the small ``.dvc`` file.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pandas as pd

from fkp.core.groups import GROUPS_COLUMNS, GROUPS_CSV
from fkp.core.kaggle_csv import ID_LOOKUP_CSV, SAMPLE_SUBMISSION_CSV, TEST_CSV, TRAINING_CSV
from fkp.core.keypoints import ID_LOOKUP_COLUMNS, SUBMISSION_COLUMNS, TEST_COLUMNS, TRAINING_COLUMNS
from fkp.errors import DataError
from fkp.params import LimitsParams
from fkp.safety.archives import ArchiveLimits, extract
from fkp.safety.owner import token
from fkp.safety.swap import staging_dir

COMPETITION = "facial-keypoints-detection"
DEFAULT_DEST = Path("data/raw/kaggle")
REQUIRED = {TRAINING_CSV: TRAINING_COLUMNS, TEST_CSV: TEST_COLUMNS, ID_LOOKUP_CSV: ID_LOOKUP_COLUMNS}
#: optional files are kept when present; groups.csv keeps the split person-disjoint
OPTIONAL = {SAMPLE_SUBMISSION_CSV: SUBMISSION_COLUMNS, GROUPS_CSV: GROUPS_COLUMNS}


class KaggleCredentialsError(RuntimeError):
    """No Kaggle API credentials: say exactly where they go and what the alternative is."""


WANTED = {**REQUIRED, **OPTIONAL}
_SNIFF_BYTES = 1 << 16


class _Staging:
    """Files gathered from the user's folder or zip, each with the name the user knows it by.

    Errors name ``label`` (``~/Downloads/kaggle.zip > training.zip > training.csv``), never the
    temporary path the file was staged at. Everything is checked before it is copied or
    extracted: a folder's files must be regular files within ``csv_max_bytes``, and all archives
    of one import share one budget of ``zip_max_total_bytes`` for the entries the import uses
    (the other entries are never extracted).
    """

    def __init__(self, root: Path, limits: LimitsParams) -> None:
        self.root = root
        self.limits = limits
        self.archive_limits = ArchiveLimits.from_params(limits)
        self.extracted = 0
        self.labels: dict[Path, str] = {}

    def add_archive(self, archive: Path | BinaryIO, label: str, depth: int = 0) -> None:
        """Extract (checked) the wanted entries; archives inside it are extracted too (one level)."""
        folder = Path(tempfile.mkdtemp(prefix="zip-", dir=self.root))
        nested = depth < 1  # Kaggle's download is a zip of zips

        def keep(entry: str) -> str | None:
            name = PurePosixPath(entry.replace("\\", "/")).name
            if name in WANTED:
                return name
            return "archive.zip" if nested and name.lower().endswith(".zip") else None

        for path, entry in extract(archive, folder, label, self.archive_limits, keep, self.extracted):
            self.extracted += path.stat().st_size
            inner = f"{label} > {entry}"
            if path.name == "archive.zip":
                self.add_archive(path, inner, depth + 1)
                path.unlink()
            else:
                self.labels[path] = inner

    def add_file(self, source: Path, label: str) -> None:
        """Copy one file of the user's folder (a symlink is followed; a loop or dangling link is named).

        The file is opened without blocking (a named pipe cannot hang the import) and checked on
        the open descriptor (regular file, size) before a byte is copied, and no more than its
        checked size is ever copied, so a file that grows meanwhile cannot fill the disk.
        """
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as error:
            why = "symbolic link loop" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
            raise DataError(why, file=label) from None
        with open(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"is {_kind(info.st_mode)}, not a regular file: refused", file=label)
            if source.suffix.lower() == ".zip":
                self.add_archive(handle, label)  # the file that was checked, not its name again
                return
            check_size(info.st_size, label, self.limits.csv_max_bytes)
            target = Path(tempfile.mkdtemp(prefix="file-", dir=self.root)) / source.name
            _copy_at_most(handle, target, info.st_size)
        self.labels[target] = label

    def add_folder(self, folder: Path) -> None:
        """The wanted files and zips of a folder tree; symlinked folders are not entered (no loops)."""
        for root, _dirs, names in os.walk(folder, followlinks=False):
            for name in sorted(names):
                if name in WANTED or name.lower().endswith(".zip"):
                    self.add_file(Path(root) / name, str(Path(root) / name))

    def find(self, name: str) -> tuple[Path, str] | None:
        """The first staged file called ``name`` (by the user's label), with its label."""
        hits = sorted((label, path) for path, label in self.labels.items() if path.name == name)
        return (hits[0][1], hits[0][0]) if hits else None


def _copy_at_most(source: BinaryIO, target: Path, size: int) -> None:
    """Copy at most ``size`` bytes: what was checked is all that is copied."""
    with target.open("wb") as sink:
        while size > 0 and (chunk := source.read(min(size, 1 << 20))):
            sink.write(chunk)
            size -= len(chunk)


def _kind(mode: int) -> str:
    """What a non-regular file is, in the user's words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def check_size(size: int, label: str, max_bytes: int) -> None:
    """Refuse an empty or oversized CSV (by its size alone, so before it is copied)."""
    if size == 0:
        raise DataError("is empty (0 bytes): download it again", file=label)
    if size > max_bytes:
        raise DataError(
            f"is {size:,} bytes, above the limit of {max_bytes:,} (limits.csv_max_bytes in params.yaml)",
            file=label,
        )


def check_csv_file(path: Path, label: str, max_bytes: int) -> None:
    """Refuse an empty, oversized or binary CSV before pandas sees it."""
    check_size(path.stat().st_size, label, max_bytes)
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if (zero := head.find(b"\0")) >= 0:
        raise DataError(f"is not a text CSV (binary data at byte {zero})", file=label)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # a multi-byte character cut by the sniff window is fine
            raise DataError(f"is not a UTF-8 text CSV (byte {error.start} is invalid)", file=label) from None


def check_header(path: Path, expected: tuple[str, ...], label: str | None = None) -> None:
    """Fail with the file name and the missing/unexpected columns if the header is not Kaggle's."""
    label = label or str(path)
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"has no readable CSV header ({_first_line(error)})", file=label) from None
    missing = [c for c in expected if c not in header]
    if missing:
        extra = [c for c in header if c not in expected]
        raise DataError(f"missing column(s) {missing}; unexpected column(s) {extra}", file=label)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def collect_kaggle_files(
    src: str | Path, workdir: Path, limits: LimitsParams | None = None
) -> dict[str, Path]:
    """Find (unzipping safely if needed) and check the Kaggle files under ``src``.

    Returns staged copies inside ``workdir``; every error names the user's file.
    """
    src = Path(src)
    limits = limits or LimitsParams()
    if not src.exists():
        raise DataError("no such file or folder", file=src)
    staging = _Staging(workdir, limits)
    if src.is_file():
        if src.suffix.lower() != ".zip" and not zipfile.is_zipfile(src):
            raise DataError("expected a folder of Kaggle CSVs or Kaggle's zip archive", file=src)
        staging.add_archive(src, str(src))
    else:
        staging.add_folder(src)
    found: dict[str, Path] = {}
    for name, columns in WANTED.items():
        hit = staging.find(name)
        if hit is None:
            if name in REQUIRED:
                raise DataError(f"{name} not found (need {', '.join(REQUIRED)})", file=src)
            continue
        path, label = hit
        check_csv_file(path, label, limits.csv_max_bytes)
        check_header(path, columns, label)
        found[name] = path
    return found


def dvc_add(path: Path) -> None:
    """Track ``path`` with DVC (writes ``path.dvc`` and a .gitignore entry)."""
    subprocess.run([sys.executable, "-m", "dvc", "add", str(path)], check=True)


def import_dir(
    src: str | Path,
    dest: str | Path = DEFAULT_DEST,
    *,
    track: bool = True,
    limits: LimitsParams | None = None,
) -> Path:
    """Check and copy user-downloaded Kaggle files into ``dest``, then ``dvc add`` it.

    The files are staged beside ``dest`` and the new folder replaces the old one in one step, so a
    bad input, a crash or a kill leaves the previous data as it was; a kill's staging folder is
    removed at the next start (:func:`fkp.safety.leftovers.remove_stale`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".import.{token()}.") as tmp:
        files = collect_kaggle_files(src, Path(tmp), limits)
        with staging_dir(dest) as ready:
            for name, path in files.items():
                os.replace(path, ready / name)
    print(f"imported {', '.join(sorted(files))} into {dest}")
    if track:
        dvc_add(dest)
        print(f"tracked with DVC: commit {dest}.dvc with git, then `dvc push` to store the data")
    return dest


def has_kaggle_credentials() -> bool:
    """True when the Kaggle client can authenticate without asking (env vars or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def download_kaggle(dest: str | Path = DEFAULT_DEST, *, track: bool = True) -> Path:
    """Download the competition files with the Kaggle API and import them like a user download."""
    if not has_kaggle_credentials():
        raise KaggleCredentialsError(
            "no Kaggle API credentials found. Create a token on your Kaggle account page and save it as "
            "~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY), accept the rules of the "
            f"'{COMPETITION}' competition, then run `fkp data kaggle` again. Or download the files "
            "yourself and run `fkp data import DIR`."
        )
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported here: it reads credentials at import

    api = KaggleApi()
    api.authenticate()
    with tempfile.TemporaryDirectory(prefix="fkp-kaggle-") as tmp:
        print(f"downloading {COMPETITION} from Kaggle ...")
        api.competition_download_files(COMPETITION, path=tmp, quiet=False)
        return import_dir(tmp, dest, track=track)
