"""A model that has never seen the people the photo benchmark scores.

The benchmark photos are the frames ``youtube-faces-96/training.csv`` was cut from, so a model
trained on all of it scores them in-sample. This trains the default config on the suite's
person-disjoint split (validation fraction 0.2, split seed 0, whole ``group`` ids on one side) and
records which groups it held out next to the model, so only those people's faces are scored.

    python -m benchmarks.photo_model --csv training.csv.gz --groups groups.csv --out holdout.keras \
        [-S train.epochs=60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.accuracy import evaluate_config, load_config, load_dataset
from fkp.atomic import write_text

VAL_FRACTION, SPLIT_SEED = 0.2, 0


def groups_file(model: Path) -> Path:
    """Where the held-out ``group`` ids of ``model`` are written (``<model>.heldout.json``)."""
    return model.with_name(model.name + ".heldout.json")


def held_out_groups(model: Path) -> set[int] | None:
    """The groups ``model`` never trained on, or ``None`` when unknown (an in-sample model)."""
    path = groups_file(model)
    return set(json.loads(path.read_text())["held_out_groups"]) if path.is_file() else None


def train_holdout(csv: Path, groups: Path, out: Path, params: Path, overrides: list[str]) -> dict:
    """Train on the people of the split's training side; write the model and its held-out groups."""
    from fkp.core.groups import read_groups

    config = load_config(params, overrides)
    data, split = load_dataset(csv, groups, VAL_FRACTION, SPLIT_SEED)
    group_ids = read_groups(groups, len(data.images))
    result = evaluate_config(
        "photo-holdout", config, data.images, data.keypoints, split, model_out=out, log_mlflow=False
    )
    record = {
        "held_out_groups": sorted({int(g) for g in group_ids[split.val]}),
        "split_id": split.split_id,
        "val_rmse_96px": result.rmse,
        "epochs": result.epochs_run,
        "train_seconds": result.train_seconds,
        "overrides": overrides,
    }
    write_text(groups_file(out), json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--groups", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the .keras file to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    record = train_holdout(args.csv, args.groups, args.out, args.params, args.overrides)
    print(json.dumps({k: v for k, v in record.items() if k != "held_out_groups"}))


if __name__ == "__main__":
    main()
