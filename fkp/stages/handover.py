"""The files the stages hand each other, named once for the code.

``dvc.yaml`` names the same paths as the stages' outs and deps (it is the DAG's one definition);
``tests/test_layout.py`` checks that each path here is one of them, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

PREPARED_DIR = Path("data/prepared")
MODEL = Path("models/model.keras")
RUN_JSON = Path("reports/train/run.json")  # the training's MLflow run: id, model URI, split id
HISTORY_CSV = Path("reports/train/history.csv")
METRICS_JSON = Path("metrics.json")  # committed to git: what `dvc metrics diff` compares
REGISTRY_JSON = Path("reports/registry.json")  # the register stage's decision
