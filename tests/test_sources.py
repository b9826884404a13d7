"""Real-data path: user-downloaded Kaggle files (folder or Kaggle's zip of zips) and the Kaggle API."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from fkp.core.kaggle_csv import read_training, write_id_lookup, write_test, write_training
from fkp.errors import DataError
from fkp.sources import KaggleCredentialsError, download_kaggle, import_dir


def _kaggle_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(20, 70, size=(4, 30)).astype(np.float32)
    write_training(folder / "training.csv", rng.integers(0, 256, (4, 96, 96), dtype=np.uint8), keypoints)
    write_test(folder / "test.csv", np.array([1, 2]), rng.integers(0, 256, (2, 96, 96), dtype=np.uint8))
    lookup = pd.DataFrame(
        {"RowId": [1, 2], "ImageId": [1, 2], "FeatureName": ["nose_tip_x", "nose_tip_y"], "Location": np.nan}
    )
    write_id_lookup(folder / "IdLookupTable.csv", lookup)
    pd.DataFrame({"RowId": [1, 2], "Location": [0, 0]}).to_csv(folder / "SampleSubmission.csv", index=False)
    return keypoints


def _dvc_repo(path):
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    return path


def test_import_folder_copies_checks_and_tracks(tmp_path, monkeypatch):
    keypoints = _kaggle_files(tmp_path / "download")
    repo = _dvc_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    dest = import_dir(tmp_path / "download")
    assert sorted(p.name for p in dest.iterdir()) == [
        "IdLookupTable.csv",
        "SampleSubmission.csv",
        "test.csv",
        "training.csv",
    ]
    np.testing.assert_allclose(read_training(dest / "training.csv").keypoints, keypoints, atol=1e-4)
    assert (repo / "data/raw/kaggle.dvc").read_text().count("md5") >= 1
    assert "/kaggle" in (repo / "data/raw/.gitignore").read_text()


def test_import_kaggle_zip_of_zips(tmp_path):
    files = tmp_path / "files"
    _kaggle_files(files)
    archive = tmp_path / "facial-keypoints-detection.zip"
    with zipfile.ZipFile(archive, "w") as outer:
        for name in ("training", "test"):
            inner = tmp_path / f"{name}.zip"
            with zipfile.ZipFile(inner, "w") as zf:
                zf.write(files / f"{name}.csv", f"{name}.csv")
            outer.write(inner, inner.name)
        outer.write(files / "IdLookupTable.csv", "IdLookupTable.csv")
    dest = import_dir(archive, tmp_path / "raw" / "kaggle", track=False)
    assert (dest / "training.csv").read_bytes() == (files / "training.csv").read_bytes()
    assert (dest / "test.csv").exists() and not (dest / "SampleSubmission.csv").exists()


def test_bad_import_names_the_file_and_keeps_previous_data(tmp_path):
    good = tmp_path / "good"
    _kaggle_files(good)
    dest = import_dir(good, tmp_path / "raw" / "kaggle", track=False)
    before = (dest / "training.csv").read_bytes()
    bad = tmp_path / "bad"
    _kaggle_files(bad)
    df = pd.read_csv(bad / "test.csv").rename(columns={"ImageId": "Id"})
    df.to_csv(bad / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test.csv: missing column\(s\) \['ImageId'\]"):
        import_dir(bad, dest, track=False)
    assert (dest / "training.csv").read_bytes() == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kaggle"]  # no staging left behind


def test_missing_required_file_is_named(tmp_path):
    folder = tmp_path / "partial"
    _kaggle_files(folder)
    (folder / "IdLookupTable.csv").unlink()
    with pytest.raises(DataError, match="IdLookupTable.csv not found"):
        import_dir(folder, tmp_path / "raw" / "kaggle", track=False)


def test_kaggle_without_credentials_explains_what_to_do(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(KaggleCredentialsError, match=r"kaggle.json.*fkp data import"):
        download_kaggle(tmp_path / "raw" / "kaggle")
    assert not (tmp_path / "raw").exists()


def test_cli_reports_missing_credentials_with_exit_code_2(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    from fkp.cli import main

    assert main(["data", "kaggle", "--dest", str(tmp_path / "k"), "--no-dvc"]) == 2


# ----------------------------------------------------------- hostile input, through the fkp command

FILE_LIMIT = 20 << 20  # the fkp process may write no file larger: a copy that should not happen fails


def _fkp_import(src, cwd, *params: str, **limits):
    """Run ``fkp data import`` as a user does, unable to write a file over FILE_LIMIT bytes."""
    if limits:
        (cwd / "limits.yaml").write_text(yaml.safe_dump({"limits": limits}))
        params = ("--params", str(cwd / "limits.yaml"))

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fkp.cli",
            *params,
            "data",
            "import",
            str(src),
            "--dest",
            "raw/kaggle",
            "--no-dvc",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap_file_size,
        check=False,
    )


def _refused(done, *needles: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("fkp data import: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _folder_with(tmp_path, make_training):
    folder = tmp_path / "download"
    _kaggle_files(folder)
    (folder / "training.csv").unlink()
    make_training(folder / "training.csv")
    return folder


def _sparse(path):
    with path.open("wb") as handle:
        handle.truncate(3 << 29)  # 1.5 GiB of holes: above csv_max_bytes, takes no disk


FOLDER_CASES = {
    "symlink to /dev/zero": (
        lambda p: p.symlink_to("/dev/zero"),
        "training.csv: is a device, not a regular file",
    ),
    "named pipe": (os.mkfifo, "training.csv: is a named pipe, not a regular file"),
    "sparse 1.5 GiB CSV": (_sparse, "training.csv: is 1,610,612,736 bytes, above the limit"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_folder_import_checks_type_and_size_before_copying(case, tmp_path):
    make, expected = FOLDER_CASES[case]
    folder = _folder_with(tmp_path, make)
    _refused(_fkp_import(folder, tmp_path), str(folder / "training.csv"), expected)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def _random_block_text(size: int, seed: int) -> bytes:
    """``size`` bytes that deflate about 100:1 (a random 8 KiB block repeated): under any ratio limit."""
    block = np.random.default_rng(seed).integers(48, 58, 8192, dtype=np.uint8).tobytes()
    return (block * (size // len(block) + 1))[:size]


def test_nested_zips_share_one_budget(tmp_path):
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as outer:
        for i in range(10):
            inner = tmp_path / f"part{i}.zip"
            with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("training.csv", _random_block_text(1_000_000, i))
            outer.write(inner, inner.name)
    assert archive.stat().st_size < 1_000_000  # each part and the outer zip are within 3 MB alone
    done = _fkp_import(archive, tmp_path, zip_max_total_bytes=3_000_000)
    _refused(done, "download.zip > part", "already unpacked by this import", "limits.zip_max_total_bytes")


def test_entries_the_import_does_not_use_are_neither_counted_nor_extracted(tmp_path):
    files = tmp_path / "files"
    _kaggle_files(files)
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(files.iterdir()):
            zf.write(path, path.name)
        zf.writestr("extras/notes.bin", _random_block_text(900_000, 1))
    done = _fkp_import(archive, tmp_path, zip_max_total_bytes=800_000)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "raw/kaggle/training.csv").read_bytes() == (files / "training.csv").read_bytes()


def _zip_with(tmp_path, *entries: zipfile.ZipInfo | str):
    files = tmp_path / "files"
    _kaggle_files(files)
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(files.iterdir()):
            zf.write(path, path.name)
        for entry in entries:
            zf.writestr(entry, "x")
    return archive


def _fifo_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


ENTRY_CASES = {
    "file and folder": (("x", "x/y.txt"), "entry 'x' is a file and also the folder of entry 'x/y.txt'"),
    "entry named .": ((".",), "entry '.' has no file name"),
    "300-character name": (("n" * 300,), "has a name part longer than 255 bytes"),
    "named pipe entry": ((_fifo_entry("pipe/training.csv"),), "entry 'pipe/training.csv' is a named pipe"),
}


@pytest.mark.parametrize("case", ENTRY_CASES)
def test_unusable_zip_entries_are_one_line_naming_the_entry(case, tmp_path):
    entries, expected = ENTRY_CASES[case]
    archive = _zip_with(tmp_path, *entries)
    _refused(_fkp_import(archive, tmp_path), "download.zip: ", expected)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
