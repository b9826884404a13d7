"""The benchmark suite: the seed recipe, the first default, the default config and presets, in one run.

All are trained on the same person-disjoint split of a Kaggle-format training.csv (the seed recipe
gets the wall time the first default took, or the default config's without ``--preset v1``),
scored on observed labels, scored again on the validation faces under seven distortions
(:mod:`fkp.core.robustness`) and timed on CPU as they are served. Writes its part of BENCHMARKS.md
(between the suite markers; hand-written sections are kept).

    python -m benchmarks.suite --csv ../shared/data/youtube-faces-96/training.csv.gz \
        --groups ../shared/data/youtube-faces-96/groups.csv --preset v1 --preset accurate --out BENCHMARKS.md
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
from benchmarks.markdown import BEGIN, END, load_average, splice
from benchmarks.parse_speed import measure_parse
from benchmarks.speed import inference_report
from fkp.core.keypoints import KEYPOINT_NAMES
from fkp.params import Params

TARGET_RMSE = 1.40
TARGET_TRAIN_MIN = 15
TARGET_IMAGES_PER_S = 2000
TARGET_P50_MS = 5.0
ACCURATE_TRAIN_MIN = 60
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
#: Reference points on unseen people of the shared source (other tools, measured separately).
REFERENCES = "dlib 2.25 px, MediaPipe Face Mesh 2.14 px (about 1.65 px once shifted to this labelling)"
PRESET_LABELS = {"v1": "first default (v1)", "accurate": "accurate preset"}


def seed_recipe(params: Params) -> Params:
    """The classic recipe: ffill labels, the 5-conv/3-pool CNN, MSE, no augmentation, no TTA."""
    train = dataclasses.replace(
        params.train,
        loss="mse",
        lr=1e-3,
        lr_schedule="constant",
        weight_decay=0.0,
        ema=0.0,
        tta_flip=False,
        augment=dataclasses.replace(params.train.augment, enabled=False),
    )
    return dataclasses.replace(
        params,
        impute=dataclasses.replace(params.impute, strategy="ffill"),
        model=dataclasses.replace(params.model, arch="seed"),
        train=train,
    )


def preset_overrides(name: str) -> list[str]:
    """The ``key=value`` overrides of ``presets/<name>.args`` (``-S key=value`` per line)."""
    path = PRESETS_DIR / f"{name}.args"
    if not path.exists():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.args"))
        raise SystemExit(f"benchmarks.suite: no preset {name!r} ({path}); known: {', '.join(known)}")
    words = shlex.split(path.read_text(), comments=True)
    return [w for w in words if w not in ("-S", "--set-param")]


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


def describe(params: Params) -> str:
    m, t, a = params.model, params.train, params.train.augment
    if m.arch == "seed":
        return "ffill + 5-conv/3-pool CNN, MSE"
    parts = [f"{params.impute.strategy} + {m.arch} CNN (width {m.width}, {m.head} head)", f"masked {t.loss}"]
    if t.ema:
        parts.append(f"EMA {t.ema}")
    degradations = [k for k in ("blur", "noise", "jpeg", "gamma", "occlusion") if getattr(a, k) > 0]
    parts.append("augmentation" + (f" + {', '.join(degradations)}" if degradations else ""))
    parts.append(f"{t.epochs} epochs")
    if t.tta_flip:
        parts.append("flip TTA")
    return ", ".join(parts)


def render(
    command: str,
    parse: dict,
    results: dict[str, AccuracyResult],
    speeds: dict[str, dict],
    configs: dict[str, Params],
    robustness: dict[str, dict[str, float]],
    loads: dict[str, str],
) -> str:
    from fkp.core.robustness import DESCRIPTIONS

    names = list(results)
    seed, default = results["seed recipe"], results["default config"]
    s_def, p_def = speeds["default config"], serving_path(configs["default config"])

    def table(header: str, rows: list[list[str]]) -> list[str]:
        out = [f"| {header} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rows]

    def per(fn) -> list[str]:
        return [fn(n) for n in names]

    def ips(name: str, batch: int) -> float:
        return _path(speeds[name], serving_path(configs[name]), batch)["images_per_s"]

    def lat(name: str, batch: int) -> str:
        r = _path(speeds[name], serving_path(configs[name]), batch)
        return f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"

    rows = [
        ["recipe", *per(lambda n: describe(configs[n]))],
        ["validation RMSE (px)", *per(lambda n: f"**{results[n].rmse:.3f}**")],
        ["vs seed recipe", *per(lambda n: _versus(results[n].rmse, seed.rmse) if n != "seed recipe" else "")],
        ["mean-face baseline, same split (px)", *per(lambda n: f"{results[n].mean_face_rmse:.3f}")],
        ["validation MAE (px)", *per(lambda n: f"{results[n].mae:.3f}")],
        ["training rows used", *per(lambda n: str(results[n].n_train))],
        ["epochs run (best)", *per(lambda n: f"{results[n].epochs_run} ({results[n].best_epoch})")],
        [
            "train time to best epoch (incl. teacher)",
            *per(lambda n: f"{results[n].seconds_to_best / 60:.1f} min"),
        ],
        [
            "train time, all epochs (incl. teacher)",
            *per(lambda n: f"{results[n].train_seconds / 60:.1f} min"),
        ],
        ["training throughput (images/s)", *per(lambda n: f"{results[n].train_images_per_s:.0f}")],
        *[
            [f"inference, batch {b} (images/s)", *per(lambda n, b=b: f"{ips(n, b):.0f}")]
            for b in (1, 32, 1000)
        ],
        *[
            [f"latency per image, batch {b}: p50 / p99 (ms)", *per(lambda n, b=b: lat(n, b))]
            for b in (1, 32, 1000)
        ],
        ["parameters", *per(lambda n: f"{speeds[n]['params']:,}")],
        ["model file (.keras)", *per(lambda n: f"{speeds[n]['size_mb']:.2f} MB")],
        ["machine load (1/5/15 min) when this model finished", *per(lambda n: loads[n])],
    ]
    best_ms = _path(s_def, p_def, 1)["p50_ms"]
    lines = [
        BEGIN,
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
        "over the labelled coordinates of the validation faces. References on such unseen people: "
        f"{REFERENCES}.",
        "",
        "## Models",
        "",
        *table("", rows),
        "",
        "Inference runs the saved Keras model through `tf.function` as each model is served (flip "
        "averaging, where on, is two forward passes). Training time includes the teacher where the "
        "imputation trains one (`impute.strategy: pseudo`).",
        "",
        "## Targets (default config)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _target(
            f"<= {TARGET_RMSE:.2f} px without flip averaging",
            f"{default.rmse:.3f} px",
            default.rmse <= TARGET_RMSE and not configs["default config"].train.tta_flip,
        ),
        _target(
            f"trains to its best epoch in <= {TARGET_TRAIN_MIN} min",
            f"{default.seconds_to_best / 60:.1f} min",
            default.seconds_to_best <= TARGET_TRAIN_MIN * 60,
        ),
        _target(
            ">= 2,000 images/s at batch 1,000",
            f"{ips('default config', 1000):.0f} images/s",
            ips("default config", 1000) >= TARGET_IMAGES_PER_S,
        ),
        _target("< 5 ms p50 for one image", f"{best_ms:.2f} ms", best_ms < TARGET_P50_MS),
        _target("below calibrated MediaPipe (1.65 px)", f"{default.rmse:.3f} px", default.rmse < 1.65),
    ]
    if "accurate preset" in results:
        acc = results["accurate preset"]
        lines.append(
            _target(
                f"accurate preset trains in <= {ACCURATE_TRAIN_MIN} min",
                f"{acc.train_seconds / 60:.1f} min",
                acc.train_seconds <= ACCURATE_TRAIN_MIN * 60,
            )
        )
    lines += [
        "",
        "## Robustness (validation RMSE, px, under each distortion)",
        "",
        "The same validation faces, distorted one way at a time at a fixed severity "
        "(`fkp/core/robustness.py`, OpenCV, independent of the training augmentation); the labels move "
        "only with the geometric ones (rotation, zoom, offset).",
        "",
        *table(
            "distortion",
            [[DESCRIPTIONS[k], *per(lambda n, k=k: f"{robustness[n][k]:.3f}")] for k in DESCRIPTIONS],
        ),
        "",
        "## Per keypoint (validation RMSE, px)",
        "",
        *table(
            "keypoint",
            [[k, *per(lambda n, k=k: f"{results[n].per_keypoint[k]:.3f}")] for k in KEYPOINT_NAMES],
        ),
        "",
        "## Parsing training.csv",
        "",
        f"A generated full-size training.csv ({parse['rows']} rows, {parse['size_mb']:.0f} MB), "
        "best of repeated runs:",
        "",
        "| | seconds |",
        "|---|---|",
        f"| naive `df.Image.apply(lambda s: np.fromstring(s, sep=' '))` | {parse['naive_s']:.2f} |",
        f"| `fkp.core.images.parse_images` | {parse['fkp_s']:.2f} ({parse['speedup']:.1f}x faster) |",
        f"| `fkp.core.kaggle_csv.read_training` (CSV + parse) | {parse['read_training_s']:.2f} |",
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
        for path, path_rows in report["paths"].items():
            for r in path_rows:
                cells = [name, path, r["batch"], f"{r['images_per_s']:.0f}", f"{r['p50_ms']:.2f}"]
                lines.append("| " + " | ".join(map(str, cells)) + f" | {r['p99_ms']:.2f} |")
    lines += ["", "MLflow runs of these trainings are in experiment `fkp-benchmarks`.", END]
    return "\n".join(lines)


def _versus(rmse: float, reference: float) -> str:
    change = (1 - rmse / reference) * 100
    return f"{change:.0f} % lower" if change >= 0 else f"{-change:.0f} % higher"


def _target(label: str, measured: str, ok: bool) -> str:
    return f"| {label} | {measured} | {'yes' if ok else 'NO'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--groups", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], help="on the default config"
    )
    parser.add_argument("--preset", action="append", default=[], help="also train presets/<name>.args")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--speed-seconds", type=float, default=3.0)
    args = parser.parse_args()
    command = "python -m benchmarks.suite " + shlex.join(sys.argv[1:])

    from fkp.core.predictor import predict_keypoints
    from fkp.core.robustness import robustness_scores

    print("parsing benchmark ...", flush=True)
    parse = measure_parse(repeat=2)
    data, split = load_dataset(args.csv, args.groups, 0.2, 0)
    default = load_config(args.params, args.overrides)
    presets = {PRESET_LABELS.get(n, n): load_config(args.params, preset_overrides(n)) for n in args.preset}
    # columns: the seed recipe, the first default, the default config, then the other presets
    configs = {"seed recipe": seed_recipe(default)}
    configs.update({k: v for k, v in presets.items() if k == PRESET_LABELS["v1"]})
    configs["default config"] = default
    configs.update(presets)
    # the seed recipe trains for as long as the first default did (or the default config)
    budget_from = PRESET_LABELS["v1"] if PRESET_LABELS["v1"] in configs else "default config"
    order = [budget_from, *[n for n in configs if n not in (budget_from, "seed recipe")], "seed recipe"]
    results: dict[str, AccuracyResult] = {}
    speeds: dict[str, dict] = {}
    robustness: dict[str, dict[str, float]] = {}
    loads: dict[str, str] = {}
    val_images, val_labels = data.images[split.val], data.keypoints[split.val]
    with tempfile.TemporaryDirectory() as tmp:
        for name in order:
            budget = results[budget_from].train_seconds if name == "seed recipe" else None
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
            loads[name] = load_average()
            speeds[name] = inference_report(model_path, seconds=args.speed_seconds)
            import keras

            model = keras.models.load_model(model_path)
            tta = configs[name].train.tta_flip
            robustness[name] = robustness_scores(
                lambda x, m=model, t=tta: predict_keypoints(m, x, tta_flip=t), val_images, val_labels
            )
            print(
                json.dumps(
                    {
                        "name": name,
                        "rmse": results[name].rmse,
                        "train_s": results[name].train_seconds,
                        "robustness": robustness[name],
                    }
                ),
                flush=True,
            )
    ordered = {n: results[n] for n in configs}  # columns: seed recipe, presets, default config
    text = render(command, parse, ordered, speeds, configs, robustness, loads)
    existing = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(splice(existing, text))
    print(text)


if __name__ == "__main__":
    main()
