"""The suite's plumbing: presets are valid params overrides; it rewrites only its part of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.accuracy import load_config
from benchmarks.suite import BEGIN, END, PRESETS_DIR, preset_overrides, splice

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.args")))
def test_every_preset_is_a_valid_set_of_params_overrides(name):
    overrides = preset_overrides(name)
    assert overrides and all("=" in o for o in overrides)
    load_config(PARAMS, overrides)  # an unknown or misspelt key raises


def test_a_preset_changes_what_it_names():
    params = load_config(PARAMS, preset_overrides("v1"))
    assert params.train.loss == "mse" and params.train.ema == 0.0 and params.impute.strategy == "mask"


def test_splice_replaces_the_generated_part_and_keeps_the_rest():
    existing = f"{BEGIN}\nold numbers\n{END}\n\n## Hand-written\nkept\n"
    out = splice(existing, f"{BEGIN}\nnew numbers\n{END}")
    assert "new numbers" in out and "old numbers" not in out and "## Hand-written\nkept" in out
    assert splice("", f"{BEGIN}\nx\n{END}").count(BEGIN) == 1
