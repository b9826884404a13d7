"""The two ways real Kaggle data gets in: the Kaggle API, or files a user downloaded.

Either way the files are checked (right names, right header), copied into
``data/raw/kaggle/`` through a temporary folder (a bad input never leaves a half-copied
folder behind) and tracked with ``dvc add``, so git only ever sees the small ``.dvc`` file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from fkp.errors import DataError
from fkp.kaggle_csv import ID_LOOKUP_CSV, SAMPLE_SUBMISSION_CSV, TEST_CSV, TRAINING_CSV
from fkp.keypoints import ID_LOOKUP_COLUMNS, SUBMISSION_COLUMNS, TEST_COLUMNS, TRAINING_COLUMNS

COMPETITION = "facial-keypoints-detection"
DEFAULT_DEST = Path("data/raw/kaggle")
REQUIRED = {TRAINING_CSV: TRAINING_COLUMNS, TEST_CSV: TEST_COLUMNS, ID_LOOKUP_CSV: ID_LOOKUP_COLUMNS}
OPTIONAL = {SAMPLE_SUBMISSION_CSV: SUBMISSION_COLUMNS}


class KaggleCredentialsError(RuntimeError):
    """No Kaggle API credentials: say exactly where they go and what the alternative is."""


def _extract_zips(folder: Path) -> None:
    """Unpack Kaggle's archives (the competition zip holds training.zip and test.zip)."""
    for _ in range(2):  # the download is a zip of zips
        for archive in sorted(folder.rglob("*.zip")):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(archive.parent)
            archive.unlink()


def _find(folder: Path, name: str) -> Path | None:
    matches = sorted(folder.rglob(name))
    return matches[0] if matches else None


def check_header(path: Path, expected: tuple[str, ...]) -> None:
    """Fail with the file name and the missing/unexpected columns if the header is not Kaggle's."""
    header = pd.read_csv(path, nrows=0).columns.tolist()
    missing = [c for c in expected if c not in header]
    if missing:
        extra = [c for c in header if c not in expected]
        raise DataError(f"missing column(s) {missing}; unexpected column(s) {extra}", file=path)


def collect_kaggle_files(src: str | Path, workdir: Path) -> dict[str, Path]:
    """Find (unzipping if needed) and header-check the Kaggle files under ``src``."""
    src = Path(src)
    if not src.exists():
        raise DataError("no such file or folder", file=src)
    staging = workdir / "unpacked"
    if src.is_file():
        staging.mkdir(parents=True)
        if zipfile.is_zipfile(src):
            shutil.copy2(src, staging / src.name)
        else:
            raise DataError("expected a folder of Kaggle CSVs or Kaggle's zip archive", file=src)
    else:
        shutil.copytree(src, staging)
    _extract_zips(staging)
    found: dict[str, Path] = {}
    for name, columns in {**REQUIRED, **OPTIONAL}.items():
        path = _find(staging, name)
        if path is None:
            if name in REQUIRED:
                raise DataError(f"{name} not found (need {', '.join(REQUIRED)})", file=src)
            continue
        check_header(path, columns)
        found[name] = path
    return found


def dvc_add(path: Path) -> None:
    """Track ``path`` with DVC (writes ``path.dvc`` and a .gitignore entry)."""
    subprocess.run([sys.executable, "-m", "dvc", "add", str(path)], check=True)


def import_dir(src: str | Path, dest: str | Path = DEFAULT_DEST, *, track: bool = True) -> Path:
    """Check and copy user-downloaded Kaggle files into ``dest``, then ``dvc add`` it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".import-") as tmp:
        files = collect_kaggle_files(src, Path(tmp))
        ready = Path(tmp) / "ready"
        ready.mkdir()
        for name, path in files.items():
            shutil.copy2(path, ready / name)
        if dest.exists():
            old = Path(tmp) / "previous"
            dest.rename(old)
        ready.rename(dest)
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
