"""The benchmark suite: the seed recipe and the default config, side by side, in one run.

Both are trained on the same person-disjoint split of a Kaggle-format training.csv with
the same wall-time budget (the seed recipe gets as long as the default config took), then
scored on observed labels and timed on CPU. Writes BENCHMARKS.md.

    python -m benchmarks.suite --csv ../shared/data/youtube-faces-96/training.csv.gz \
        --groups ../shared/data/youtube-faces-96/groups.csv --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from benchmarks.accuracy import AccuracyResult, evaluate_config, load_config, load_dataset
from benchmarks.parse_speed import measure_parse
from benchmarks.speed import inference_report
from fkp.keypoints import KEYPOINT_NAMES
from fkp.params import Params

TARGET_RMSE = 1.7
TARGET_TRAIN_MIN = 15
TARGET_IMAGES_PER_S = 2000
TARGET_P50_MS = 5.0


def seed_recipe(params: Params) -> Params:
    """The classic recipe: ffill labels, the 5-conv/3-pool CNN, MSE, no augmentation, no TTA."""
    train = dataclasses.replace(
        params.train,
        loss="mse",
        lr=1e-3,
        lr_schedule="constant",
        weight_decay=0.0,
        tta_flip=False,
        augment=dataclasses.replace(params.train.augment, enabled=False),
    )
    return dataclasses.replace(
        params,
        impute=dataclasses.replace(params.impute, strategy="ffill"),
        model=dataclasses.replace(params.model, arch="seed"),
        train=train,
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, no GPU"
    )


def _path(report: dict, name: str, batch: int) -> dict:
    return next(r for r in report["paths"][name] if r["batch"] == batch)


def serving_path(params: Params) -> str:
    return "tf.function + flip TTA" if params.train.tta_flip else "tf.function"


def render(
    command: str,
    parse: dict,
    results: dict[str, AccuracyResult],
    speeds: dict[str, dict],
    configs: dict[str, Params],
) -> str:
    seed, default = results["seed recipe"], results["default config"]
    s_seed, s_def = speeds["seed recipe"], speeds["default config"]
    p_seed, p_def = serving_path(configs["seed recipe"]), serving_path(configs["default config"])

    def row(label: str, a: str, b: str, ratio: str = "") -> str:
        return f"| {label} | {a} | {b} | {ratio} |"

    def ips(report: dict, path: str, batch: int) -> float:
        return _path(report, path, batch)["images_per_s"]

    lines = [
        "# Benchmarks",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}.",
        "",
        "Reproduce with one command (from the repository root, venv active):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Data: {default.n_train + default.n_val} real faces (Kaggle training.csv format), split by person: "
        f"{default.n_val} validation faces of people never seen in training. Scores are RMSE in pixels "
        "over the labelled coordinates of the validation faces.",
        "",
        "## Seed recipe vs default config",
        "",
        "| | seed recipe | default config | default vs seed |",
        "|---|---|---|---|",
        row("recipe", "ffill + 5-conv/3-pool CNN, MSE", _describe(configs["default config"]), ""),
        row(
            "validation RMSE (px)",
            f"{seed.rmse:.3f}",
            f"{default.rmse:.3f}",
            f"{(1 - default.rmse / seed.rmse) * 100:.0f} % lower",
        ),
        row(
            "mean-face baseline, same split (px)",
            f"{seed.mean_face_rmse:.3f}",
            f"{default.mean_face_rmse:.3f}",
        ),
        row("validation MAE (px)", f"{seed.mae:.3f}", f"{default.mae:.3f}"),
        row("training rows used", f"{seed.n_train}", f"{default.n_train}"),
        row(
            "epochs run (best)",
            f"{seed.epochs_run} ({seed.best_epoch})",
            f"{default.epochs_run} ({default.best_epoch})",
        ),
        row(
            "train time to best epoch",
            f"{seed.seconds_to_best / 60:.1f} min",
            f"{default.seconds_to_best / 60:.1f} min",
        ),
        row(
            "train time, all epochs",
            f"{seed.train_seconds / 60:.1f} min",
            f"{default.train_seconds / 60:.1f} min",
        ),
        row(
            "training throughput (images/s)",
            f"{seed.train_images_per_s:.0f}",
            f"{default.train_images_per_s:.0f}",
            f"{default.train_images_per_s / seed.train_images_per_s:.1f}x",
        ),
    ]
    for batch in (1, 32, 1000):
        a, b = ips(s_seed, p_seed, batch), ips(s_def, p_def, batch)
        lines.append(row(f"inference, batch {batch} (images/s)", f"{a:.0f}", f"{b:.0f}", f"{b / a:.1f}x"))
    for batch in (1, 32, 1000):
        a, b = _path(s_seed, p_seed, batch), _path(s_def, p_def, batch)
        lines.append(
            row(
                f"latency per image, batch {batch}: p50 / p99 (ms)",
                f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f}",
                f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}",
            )
        )
    lines += [
        row(
            "parameters",
            f"{s_seed['params']:,}",
            f"{s_def['params']:,}",
            f"{s_def['params'] / s_seed['params']:.2f}x",
        ),
        row(
            "model file (.keras)",
            f"{s_seed['size_mb']:.2f} MB",
            f"{s_def['size_mb']:.2f} MB",
            f"{s_def['size_mb'] / s_seed['size_mb']:.2f}x",
        ),
        "",
        f"Inference runs the saved Keras model through `{p_def}` for the default config and `{p_seed}` "
        "for the seed recipe, as each is served (flip averaging, when on, costs two forward passes).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _target("RMSE below 1.7 px", f"{default.rmse:.3f} px", default.rmse < TARGET_RMSE),
        _target(
            "RMSE at least 50 % below the seed recipe",
            f"{(1 - default.rmse / seed.rmse) * 100:.0f} % below",
            default.rmse <= 0.5 * seed.rmse,
        ),
        _target(
            "below dlib (2.25 px) and MediaPipe Face Mesh (2.14 px)",
            f"{default.rmse:.3f} px",
            default.rmse < 2.14,
        ),
        _target(
            "trains to its best epoch in under 15 min",
            f"{default.seconds_to_best / 60:.1f} min",
            default.seconds_to_best < TARGET_TRAIN_MIN * 60,
        ),
        _target(
            ">= 2,000 images/s at batch 1,000",
            f"{ips(s_def, p_def, 1000):.0f} images/s",
            ips(s_def, p_def, 1000) >= TARGET_IMAGES_PER_S,
        ),
        _target(
            "< 5 ms p50 for one image",
            f"{_path(s_def, p_def, 1)['p50_ms']:.2f} ms",
            _path(s_def, p_def, 1)["p50_ms"] < TARGET_P50_MS,
        ),
        "",
        "## Per keypoint (validation RMSE, px)",
        "",
        "| keypoint | seed recipe | default config |",
        "|---|---|---|",
        *[f"| {k} | {seed.per_keypoint[k]:.3f} | {default.per_keypoint[k]:.3f} |" for k in KEYPOINT_NAMES],
        "",
        "## Parsing training.csv",
        "",
        f"A generated full-size training.csv ({parse['rows']} rows, {parse['size_mb']:.0f} MB), "
        "best of repeated runs:",
        "",
        "| | seconds |",
        "|---|---|",
        f"| naive `df.Image.apply(lambda s: np.fromstring(s, sep=' '))` | {parse['naive_s']:.2f} |",
        f"| `fkp.images.parse_images` | {parse['fkp_s']:.2f} ({parse['speedup']:.1f}x faster) |",
        f"| `fkp.kaggle_csv.read_training` (CSV + parse) | {parse['read_training_s']:.2f} |",
        f"| load of the prepared `.npz` cache | {parse['cache_load_s']:.2f} |",
        "",
        "## All inference paths",
        "",
        "`model.predict` pays Keras' per-call overhead; `tf.function` is what `fkp` uses to predict.",
        "",
        "| model | path | batch | images/s | p50 ms/image | p99 ms/image |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in speeds.items():
        for path, rows in report["paths"].items():
            for r in rows:
                cells = [name, path, r["batch"], f"{r['images_per_s']:.0f}", f"{r['p50_ms']:.2f}"]
                lines.append("| " + " | ".join(map(str, cells)) + f" | {r['p99_ms']:.2f} |")
    lines += ["", "MLflow runs of both trainings are in experiment `fkp-benchmarks`.", ""]
    return "\n".join(lines)


def _describe(params: Params) -> str:
    m, t = params.model, params.train
    tta = ", flip TTA" if t.tta_flip else ""
    return f"{params.impute.strategy} + {m.arch} CNN (width {m.width}), masked {t.loss}, augmentation{tta}"


def _target(label: str, measured: str, ok: bool) -> str:
    return f"| {label} | {measured} | {'yes' if ok else 'NO'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--groups", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--speed-seconds", type=float, default=3.0)
    args = parser.parse_args()
    command = "python -m benchmarks.suite " + shlex.join(sys.argv[1:])

    print("parsing benchmark ...", flush=True)
    parse = measure_parse(repeat=2)
    data, split = load_dataset(args.csv, args.groups, 0.2, 0)
    default = load_config(args.params, args.overrides)
    configs = {"default config": default, "seed recipe": seed_recipe(default)}
    results: dict[str, AccuracyResult] = {}
    speeds: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("default config", "seed recipe"):
            budget = results["default config"].train_seconds if name == "seed recipe" else None
            print(f"training {name} (budget {budget or 'none'} s) ...", flush=True)
            model_path = Path(tmp) / f"{name.replace(' ', '_')}.keras"
            results[name] = evaluate_config(
                name,
                configs[name],
                data.images,
                data.keypoints,
                split,
                time_budget_s=budget,
                model_out=model_path,
                raw_dir=args.csv.parent,
            )
            speeds[name] = inference_report(model_path, seconds=args.speed_seconds)
            print(
                json.dumps({"rmse": results[name].rmse, "train_s": results[name].train_seconds}), flush=True
            )
    text = render(command, parse, results, speeds, configs)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
