"""Fault injection: kill steps at several points and rerun; feed hostile and broken inputs.

Kills are real (SIGKILL / SIGTERM to real ``fkp`` processes on the tiny sample), and so are the
inputs (damaged zips, zip bombs, a 30000x30000 PNG bomb, truncated models, a read-only or
deleted MLflow store). After a kill and a rerun: no MLflow run is left RUNNING, no temporary is
left behind, outputs that belong together match, the registry's champion is a real version.
Every bad input gives exactly one line on stderr naming the user's file, and its exit code.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_project_copy
from mlflow import MlflowClient
from test_sources import _kaggle_files

from benchmarks.bombs import write_png_bomb, write_zip_bomb
from fkp.cli import main
from fkp.safety.leftovers import OUTPUT_FOLDERS
from fkp.safety.owner import owner_of_name
from fkp.safety.stale_runs import close_dead_runs

FKP = str(Path(sys.executable).parent / "fkp")
MODEL_NAME = "facial-keypoints-cnn"


# --------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FKP_MLFLOW_ARTIFACTS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "False", "TF_CPP_MIN_LOG_LEVEL": "3"})
    return {**env, **extra}


def fkp(project: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FKP, *args],
        cwd=project,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    done = fkp(project, *args, **env)
    assert done.returncode == 0, f"fkp {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def start_until(project: Path, args: list[str], ready: Callable[[str], bool], **env: str):
    """Start ``fkp args`` and wait until ``ready(output so far)``; the process and its log file."""
    log = project.parent / f"fkp-{time.monotonic_ns()}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [FKP, *args], cwd=project, env=_env(**env), stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300  # a bound on waiting, not a speed assertion
    while not ready(log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"fkp {' '.join(args)} never reached the point:\n{log.read_text()}")
        time.sleep(0.01)
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode, log.read_text(errors="replace")


def kill_when(
    project: Path, args: list[str], ready: Callable[[str], bool], sig: int = signal.SIGKILL, **env: str
) -> tuple[int, str]:
    """Start ``fkp args``, send ``sig`` as soon as ``ready(output so far)``; exit code and output."""
    proc, log = start_until(project, args, ready, **env)
    proc.send_signal(sig)
    return finish(proc, log)  # reaped: a zombie would still look alive


def exists(pattern: str, folder: Path) -> Callable[[str], bool]:
    return lambda _output: any(folder.glob(pattern))


def printed(text: str) -> Callable[[str], bool]:
    return lambda output: text in output


def mlflow_run_id(output: str) -> str:
    """The run id from train's "MLflow run <name> <id>" line."""
    found = re.search(r"MLflow run \S+ ([0-9a-f]{32})", output)
    assert found, output
    return found[1]


def run_statuses(project: Path) -> dict[str, str]:
    with closing(sqlite3.connect(project / "mlflow.db")) as conn:
        return dict(conn.execute("SELECT run_uuid, status FROM runs"))


def run_tag(project: Path, run_id: str, key: str) -> str | None:
    with closing(sqlite3.connect(project / "mlflow.db")) as conn:
        row = conn.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, key)).fetchone()
    return row[0] if row else None


def leftovers(project: Path) -> list[str]:
    """Temporaries of fkp steps (owner-marked dot-names) anywhere fkp writes."""
    return sorted(
        str(p.relative_to(project))
        for folder in OUTPUT_FOLDERS
        for p in (project / folder).glob(".*")
        if owner_of_name(p.name)
    )


def dead_pid() -> int:
    """The pid of a process that certainly ended (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(folder: Path, name: str, pid: int, *, is_dir: bool = False) -> Path:
    """A temporary named like fkp's, owned by ``pid`` on this host."""
    from fkp.safety.owner import host_id

    stem, _, suffix = name.partition("*")
    path = folder / f"{stem}fkp{pid}x{host_id()}.abc123{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    if is_dir:
        (path / "training.csv").parent.mkdir(parents=True)
        (path / "training.csv").write_text("half")
    else:
        path.write_bytes(b"half")
    return path


def one_line(stderr: str, command: str, *needles: str) -> str:
    """The single line a failure prints; asserts it names what it must and nothing else was printed."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"fkp {command}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def champion_version(project: Path) -> str | None:
    with closing(sqlite3.connect(project / "mlflow.db")) as conn:
        row = conn.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = 'champion'",
            (MODEL_NAME,),
        ).fetchone()
        versions = {
            str(v)
            for (v,) in conn.execute("SELECT version FROM model_versions WHERE name = ?", (MODEL_NAME,))
        }
    if row is None:
        return None
    assert str(row[0]) in versions
    return str(row[0])


def grow_training_csv(src: Path, dest: Path, times: int) -> Path:
    """Kaggle files in ``dest`` whose training.csv repeats ``src``'s rows ``times`` times (no groups)."""
    dest.mkdir(parents=True)
    for name in ("test.csv", "IdLookupTable.csv"):
        shutil.copy2(src / name, dest / name)
    header, *rows = (src / "training.csv").read_text().splitlines(keepends=True)
    (dest / "training.csv").write_text(header + "".join(rows * times))
    return dest


# --------------------------------------------------------------------------- a trained project


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with a trained, evaluated model in its own MLflow store."""
    project = make_project_copy(tmp_path_factory.mktemp("faults") / "project")
    ok(project, "sample", "--out", "data/raw/sample")
    ok(project, "prepare", "data/raw/sample")
    ok(project, "impute")
    ok(project, "train")
    ok(project, "evaluate")
    return project


@pytest.mark.slow
def test_killed_register_leaves_a_consistent_registry(trained: Path) -> None:
    ok(trained, "register")
    first = champion_version(trained)
    assert first is not None
    ok(trained, "train")  # a new run to register
    ok(trained, "evaluate")

    def new_version(_output: str) -> bool:
        with closing(sqlite3.connect(trained / "mlflow.db", timeout=30)) as conn:
            return conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] > 1

    kill_when(trained, ["register"], new_version)  # registered, not yet decided
    assert champion_version(trained) == first
    ok(trained, "register")  # the rerun decides for the version the killed one made: no third
    assert champion_version(trained) is not None
    decision = json.loads((trained / "reports/registry.json").read_text())
    assert decision["version"] == "2" and decision["registered_model"] == MODEL_NAME
    with closing(sqlite3.connect(trained / "mlflow.db")) as conn:
        assert conn.execute("SELECT count(*) FROM model_versions").fetchone()[0] == 2
    assert "RUNNING" not in run_statuses(trained).values()
    assert leftovers(trained) == []


@pytest.mark.slow
def test_killed_training_is_closed_and_cleaned_at_the_next_start(trained: Path) -> None:
    model = trained / "models/model.keras"
    before = model.read_bytes()
    handoff_before = json.loads((trained / "reports/train/run.json").read_text())["run_id"]
    runs_before = set(run_statuses(trained))

    # a start while this training runs leaves its run alone (the process is alive) ...
    proc, log = start_until(trained, ["train"], printed("MLflow run"))
    live_run = mlflow_run_id(log.read_text())
    client = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    assert close_dead_runs([client.get_experiment_by_name("fkp").experiment_id], client=client) == []
    assert run_statuses(trained)[live_run] == "RUNNING"
    # ... and SIGTERM during fit ends it FAILED at once, with one line
    proc.send_signal(signal.SIGTERM)
    code, output = finish(proc, log)
    assert code == 128 + signal.SIGTERM, output
    assert output.strip().splitlines()[-1] == "fkp train: stopped by a signal; nothing half-written was kept"
    assert "Traceback" not in output
    (terminated,) = set(run_statuses(trained)) - runs_before
    assert run_statuses(trained)[terminated] == "FAILED"
    assert leftovers(trained) == []

    # SIGKILL after fitting, while the model is saved and logged: the run stays RUNNING
    kill_when(trained, ["train"], printed(": val_rmse"))
    (killed,) = set(run_statuses(trained)) - runs_before - {terminated}
    assert run_statuses(trained)[killed] == "RUNNING"
    # killed before its model was logged: the previous model and its hand-over are still there, matching
    assert model.read_bytes() == before
    assert json.loads((trained / "reports/train/run.json").read_text())["run_id"] == handoff_before

    # what other killed steps left behind, and what a live process is still writing
    stale = [
        plant(trained / "models", ".model.*.keras", dead_pid()),
        plant(trained / "data/raw", ".import.*", dead_pid(), is_dir=True),
        plant(trained / "reports/train", ".history.*.csv", dead_pid()),
    ]
    live = plant(trained / "models", ".model.*.keras", os.getpid())

    ok(trained, "train")
    statuses = run_statuses(trained)
    assert "RUNNING" not in statuses.values()
    assert statuses[killed] == "KILLED"
    assert "killed" in (run_tag(trained, killed, "fkp.closed") or "")
    assert run_tag(trained, killed, "fkp.pid") is not None
    assert not any(p.exists() for p in stale)
    assert live.exists()
    live.unlink()
    assert leftovers(trained) == []
    assert zipfile.is_zipfile(model) and model.read_bytes() != before


@pytest.mark.slow
def test_copied_project_keeps_its_artifacts_and_a_deleted_store_is_one_line(trained: Path) -> None:
    copy = trained.parent / "copy"
    shutil.copytree(trained, copy, symlinks=True)
    original = sorted(p.name for p in (trained / "mlartifacts").iterdir())

    proc, log = start_until(copy, ["train"], printed("MLflow run"))
    run_id = mlflow_run_id(log.read_text())
    (copy / "mlflow.db").unlink()  # deleted mid-training
    code, output = finish(proc, log)
    assert code == 4, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].startswith("fkp train: MLflow store")
    last = output.strip().splitlines()[-1]  # which depends on what the step was doing at the time
    assert "mlflow.db" in last and ("deleted or moved" in last or "missing or was replaced" in last), last
    assert leftovers(copy) == []
    # the copy's run wrote its artifacts (the split, logged first) into the copy, not the original
    assert (copy / "mlartifacts" / run_id / "artifacts/split/split.json").is_file()
    assert sorted(p.name for p in (trained / "mlartifacts").iterdir()) == original


# --------------------------------------------------------------------------- kills: prepare, import


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    project = make_project_copy(tmp_path / "project")
    ok(project, "sample", "--out", "data/raw/sample")
    return project


def _prepared_set(folder: Path) -> tuple[int, int]:
    """(rows in train.npz, rows the split covers): equal when the three files belong together."""
    with np.load(folder / "train.npz") as npz:
        rows = len(npz["images"])
    split = json.loads((folder / "split.json").read_text())
    return rows, len(split["train"]) + len(split["val"])


def test_killed_prepare_leaves_the_old_set_or_the_new_one(small_project: Path) -> None:
    project = small_project
    ok(project, "prepare", "data/raw/sample")
    ok(project, "impute")
    targets = (project / "data/prepared/targets.npz").read_bytes()
    grow_training_csv(project / "data/raw/sample", project / "data/raw/big", 16)

    kill_when(project, ["prepare", "data/raw/big"], exists(".prepared.fkp*", project / "data"))
    rows, covered = _prepared_set(project / "data/prepared")
    assert rows == covered == 96  # the old set, whole
    assert leftovers(project) != []  # SIGKILL cannot clean up ...

    ok(project, "prepare", "data/raw/big")
    assert leftovers(project) == []  # ... the next start does
    assert _prepared_set(project / "data/prepared") == (96 * 16, 96 * 16)
    assert (project / "data/prepared/targets.npz").read_bytes() == targets  # another step's output stays


def test_full_disk_during_prepare_keeps_the_old_set(small_project: Path) -> None:
    project = small_project
    ok(project, "prepare", "data/raw/sample")
    grow_training_csv(project / "data/raw/sample", project / "data/raw/big", 16)
    before = {p.name: p.read_bytes() for p in (project / "data/prepared").iterdir()}

    def small_disk() -> None:  # writes past 4 MB fail like a full disk (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    done = subprocess.run(
        [FKP, "prepare", "data/raw/big"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        check=False,
    )
    assert done.returncode == 5
    one_line(done.stderr, "prepare", "no space left writing", "train.npz")
    assert {p.name: p.read_bytes() for p in (project / "data/prepared").iterdir()} == before
    assert leftovers(project) == []


def test_killed_import_keeps_the_previous_data(small_project: Path) -> None:
    project = small_project
    sample = project / "data/raw/sample"
    ok(project, "data", "import", str(sample), "--no-dvc")
    dest = project / "data/raw/kaggle"
    before = (dest / "training.csv").read_bytes()
    big = grow_training_csv(sample, project.parent / "download", 16)

    kill_when(project, ["data", "import", str(big), "--no-dvc"], exists(".import.fkp*", project / "data/raw"))
    assert (dest / "training.csv").read_bytes() == before
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["IdLookupTable.csv", "SampleSubmission.csv", "groups.csv", "test.csv", "training.csv"]
    )

    ok(project, "data", "import", str(big), "--no-dvc")
    assert leftovers(project) == []
    assert (dest / "training.csv").read_bytes() == (big / "training.csv").read_bytes()
    assert not (dest / "groups.csv").exists()  # the new download has none


# --------------------------------------------------------------------------- bad inputs: import


def _zip_folder(folder: Path, archive: Path, *, stored: bool = False) -> Path:
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(archive, "w", method) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name)
    return archive


def _bad_crc(tmp: Path) -> tuple[Path, str]:
    archive = _zip_folder(_kaggle(tmp), tmp / "download.zip", stored=True)
    data = bytearray(archive.read_bytes())
    at = data.index(b"left_eye_center_x") + 5
    data[at] ^= 0x20
    archive.write_bytes(bytes(data))
    return archive, "damaged (Bad CRC-32"


def _truncated(tmp: Path) -> tuple[Path, str]:
    archive = _zip_folder(_kaggle(tmp), tmp / "download.zip")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive, "not a readable zip archive (truncated or damaged"


def _truncated_inner(tmp: Path) -> tuple[Path, str]:
    files = _kaggle(tmp)
    inner = _zip_folder(files, tmp / "training.zip")
    inner.write_bytes(inner.read_bytes()[:1000])
    archive = tmp / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(inner, "training.zip")
    return archive, "download.zip > training.zip: not a readable zip archive"


def _entry(name: str, *, mode: int | None = None):
    def make(tmp: Path) -> tuple[Path, str]:
        archive = _zip_folder(_kaggle(tmp), tmp / "download.zip")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(info, "x")
        return archive, f"entry {name!r}"

    return make


def _zip_bomb(tmp: Path) -> tuple[Path, str]:
    return write_zip_bomb(tmp / "download.zip"), "(a zip bomb?)"


def _empty_csv(tmp: Path) -> tuple[Path, str]:
    folder = _kaggle(tmp)
    (folder / "training.csv").write_bytes(b"")
    return folder, "training.csv: is empty (0 bytes)"


def _binary_csv(tmp: Path) -> tuple[Path, str]:
    folder = _kaggle(tmp)
    (folder / "training.csv").write_bytes(np.random.default_rng(0).bytes(5000))
    return folder, "training.csv: is not a"


def _symlink_loop(tmp: Path) -> tuple[Path, str]:
    folder = _kaggle(tmp)
    (folder / "training.csv").unlink()
    (folder / "training.csv").symlink_to("training.csv")
    return folder, "training.csv: symbolic link loop"


def _kaggle(tmp: Path) -> Path:
    folder = tmp / "files"
    _kaggle_files(folder)
    return folder


IMPORT_CASES = {
    "bad CRC": _bad_crc,
    "truncated zip": _truncated,
    "truncated zip inside the zip": _truncated_inner,
    "entry with ..": _entry("../evil.csv"),
    "absolute entry": _entry("/abs/evil.csv"),
    "symlink entry": _entry("link.csv", mode=0o120777),
    "zip bomb": _zip_bomb,
    "0-byte training.csv": _empty_csv,
    "binary training.csv": _binary_csv,
    "symlink loop": _symlink_loop,
}


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_bad_import_is_one_line_naming_the_users_file(case, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    src, expected = IMPORT_CASES[case](tmp_path)
    dest = tmp_path / "data/raw/kaggle"
    assert main(["data", "import", str(src), "--dest", str(dest), "--no-dvc"]) == 1
    line = one_line(capsys.readouterr().err, "data import", str(src), expected)
    assert "/tmp/" not in line.replace(str(tmp_path), "") and ".import" not in line  # no staging paths
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # nothing left behind
    assert not Path("/abs/evil.csv").exists() and not (tmp_path.parent / "evil.csv").exists()


LIMIT_CASES = {
    "too many entries": ({"zip_max_members": 3}, "holds 4 entries, above the limit of 3"),
    "entry too big": ({"zip_max_member_bytes": 1000}, "unpacks to"),
    "archive too big": ({"zip_max_total_bytes": 1000}, "unpacks to"),
    "CSV too big": ({"csv_max_bytes": 1000}, "above the limit of 1,000 (limits.csv_max_bytes"),
}


@pytest.mark.parametrize("case", LIMIT_CASES)
def test_import_limits_are_configurable(case, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    limits, expected = LIMIT_CASES[case]
    params = tmp_path / "limits.yaml"
    params.write_text(yaml.safe_dump({"limits": limits}))
    archive = _zip_folder(_kaggle(tmp_path), tmp_path / "download.zip")
    args = ["--params", str(params), "data", "import", str(archive), "--dest", "raw/kaggle", "--no-dvc"]
    assert main(args) == 1
    one_line(capsys.readouterr().err, "data import", "download.zip", expected)
    assert main(args[2:]) == 0  # the default limits take Kaggle's files


def test_import_keeps_groups_and_ignores_symlinked_folders(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _kaggle(tmp_path)
    (folder / "groups.csv").write_text("row,group\n0,0\n1,0\n2,1\n3,1\n")
    (folder / "loop").symlink_to(".")
    assert main(["data", "import", str(folder), "--dest", "kaggle", "--no-dvc"]) == 0
    assert (tmp_path / "kaggle/groups.csv").read_text() == (folder / "groups.csv").read_text()
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------- bad inputs: photos, models, store


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_png_bomb_is_refused_from_its_header_in_little_memory(png_bomb: Path, tmp_path: Path) -> None:
    assert png_bomb.stat().st_size < 1_000_000
    probe = (
        "import resource, sys\n"
        "from fkp.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    model = tmp_path / "model.keras"
    model.write_bytes(b"never loaded")
    done = subprocess.run(
        [sys.executable, "-c", probe, "predict", "--model", str(model), str(png_bomb)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    *message, peak_kb = done.stderr.strip().splitlines()
    assert done.returncode == 1
    one_line("\n".join(message), "predict", str(png_bomb), "30000x30000", "limits.photo_max_pixels")
    assert int(peak_kb) < 1024 * 1024  # KB: under 1 GB for the whole process


def test_unreadable_photo_and_broken_model_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "photo.png"
    garbage.write_bytes(b"not a picture")
    assert main(["predict", "--model", "m.keras", str(garbage)]) == 1
    one_line(capsys.readouterr().err, "predict", "photo.png: cannot read as an image")

    data = _kaggle(tmp_path)
    for content in (b"", b"PK\x03\x04" + bytes(300)):
        model = tmp_path / "model.keras"
        model.write_bytes(content)
        assert main(["predict", "--model", str(model), "--data", str(data), "--out", "out"]) == 1
        one_line(capsys.readouterr().err, "predict", str(model), "truncated or damaged", "fkp train")
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_read_only_store_is_one_line(trained: Path) -> None:
    uri = f"sqlite:///file:{trained / 'mlflow.db'}?mode=ro&uri=true"
    done = fkp(trained, "register", MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 4
    one_line(done.stderr, "register", "mlflow.db", "is read-only")


# --------------------------------------------------------------------------- the pieces on their own


def test_only_dead_owners_on_this_host_lose_their_temporaries(tmp_path: Path) -> None:
    from fkp.safety.leftovers import remove_stale

    dead = plant(tmp_path, ".model.*.keras", dead_pid())
    live = plant(tmp_path, ".history.*.csv", os.getpid())
    foreign = tmp_path / f".model.fkp{dead_pid()}xdeadbeef.abc123.keras"  # another host: cannot tell
    foreign.write_bytes(b"x")
    unmarked = tmp_path / ".model.abc123.keras"
    unmarked.write_bytes(b"x")
    assert remove_stale([tmp_path]) == [dead]
    assert live.exists() and foreign.exists() and unmarked.exists()


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_folder_swap_replaces_all_files_at_once(atomic_exchange, tmp_path, monkeypatch) -> None:
    from fkp.safety import swap

    if not atomic_exchange:  # systems without renameat2: the two-rename fallback
        monkeypatch.setattr(swap, "exchange", lambda a, b: False)
    target = tmp_path / "prepared"
    target.mkdir()
    for name in ("a", "b", "kept"):
        (target / name).write_text("old")
    with swap.staging_dir(target, keep=["kept"]) as stage:
        (stage / "a").write_text("new")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "new", "kept": "old"}
    with pytest.raises(RuntimeError), swap.staging_dir(target) as stage:
        (stage / "a").write_text("newer")
        raise RuntimeError("failed half-way")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "new", "kept": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_signal_caught_inside_a_finalizer_still_stops_the_step() -> None:
    """Python swallows an exception raised in ``__del__``; the signal must be delivered again."""
    probe = (
        "import os, signal\n"
        "from fkp.safety.leftovers import Terminated, exit_cleanly_on_signals\n"
        "exit_cleanly_on_signals()\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(1000))  # the handler runs here, inside the finalizer\n"
        "try:\n"
        "    Finalized()\n"
        "    for _ in range(10**8): pass\n"
        "    print('still running')\n"
        "except Terminated as stop:\n"
        "    print('stopped', stop.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == "stopped 143", done.stdout + done.stderr


def test_an_error_raised_after_a_signal_is_reported_as_the_signal(monkeypatch) -> None:
    """TensorFlow tracing a function turns our SIGTERM exception into its own AssertionError."""
    from fkp.safety import leftovers
    from fkp.safety.messages import describe

    broken_graph = AssertionError("Nesting violated for default stack of FuncGraph objects")
    assert describe(broken_graph) is None  # without a signal: a bug, with its traceback
    monkeypatch.setattr(leftovers, "received_signal", signal.SIGTERM)
    failure = describe(broken_graph)
    assert failure is not None and failure.code == 128 + signal.SIGTERM
    assert failure.message == "stopped by a signal; nothing half-written was kept"
