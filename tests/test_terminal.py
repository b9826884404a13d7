"""What a person sees in the terminal: fkp's summary lines, once each, without the libraries' chatter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fkp import quiet
from fkp.cli import build_parser

NOISE = re.compile(r"oneDNN|absl|cloudpickle|CloudPickle|Downloading artifacts|Creating initial MLflow")
MAX_LINE = 200


def _run(args: list[str], cwd: Path, **env: str) -> str:
    """Run a command with fkp's quiet defaults (no FKP_VERBOSE), return stdout + stderr."""
    environment = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, *quiet.ENV_DEFAULTS)}
    done = subprocess.run(
        args, cwd=cwd, env={**environment, **env}, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_stages_print_their_summary_once_and_no_library_chatter(project_copy: Path) -> None:
    output = ""
    for stage in (
        ["sample", "--out", "data/raw/sample"],
        ["prepare", "data/raw/sample", "--out", "data/prepared"],
        ["impute"],
        ["train"],
        ["evaluate"],
        ["register"],
    ):
        output += _run(["fkp", *stage], project_copy)
    lines = output.splitlines()
    assert [line for line in lines if NOISE.search(line)] == []
    assert [len(line) for line in lines if len(line) > MAX_LINE] == []
    assert len([line for line in lines if line.startswith("best epoch")]) == 1
    assert len([line for line in lines if "becomes champion" in line]) == 1
    # one rounding for one number: the evaluated RMSE reads the same wherever it is printed
    (rmse,) = re.findall(r"validation RMSE (\d+\.\d{4}) px", output)
    assert f"RMSE {rmse})" in output  # the register decision


def test_verbose_brings_tensorflow_start_up_output_back(tmp_path: Path) -> None:
    script = "import fkp, tensorflow"
    quiet_output = _run([sys.executable, "-c", script], tmp_path)
    loud_output = _run([sys.executable, "-c", script], tmp_path, **{quiet.VERBOSE_ENV: "1"})
    assert not NOISE.search(quiet_output)
    assert re.search(r"oneDNN|absl", loud_output), "TensorFlow 2.21 on CPU prints its oneDNN banner"


def test_a_failing_import_still_shows_what_it_printed(tmp_path: Path) -> None:
    """The banner capture never hides why TensorFlow could not be imported."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'native library missing\\n')\nraise ImportError('x')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import fkp, tensorflow"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "native library missing" in done.stderr
    assert done.stderr.rstrip().endswith("ImportError: x")


@pytest.mark.parametrize("command", ["train", "evaluate", "register", "prepare", "impute"])
def test_stage_help_lists_its_params_and_how_to_change_them(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert "params.yaml" in text
    assert "dvc exp run -S" in text
    assert "--verbose" in text
    if command == "train":
        assert re.search(r"train\.lr\s+0\.006", text)
        assert "impute.strategy" in text
