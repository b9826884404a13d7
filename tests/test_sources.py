"""Real-data path: user-downloaded Kaggle files (folder or Kaggle's zip of zips) and the Kaggle API."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

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
