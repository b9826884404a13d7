"""What each candidate bought: one Markdown table of sweep variants, read back from MLflow.

Every sweep variant is an MLflow run tagged ``fkp.sweep`` / ``fkp.variant`` (``flows/sweep.py``), so
the table is a query, not a copy: the variant, its validation RMSE, the change against a reference
variant, the worst RMSE under the robustness distortions, and its training time.

    python -m benchmarks.sweep_table --reference v1            # every sweep in the store
    python -m benchmarks.sweep_table --experiment fkp --reference v1 > table.md
"""

from __future__ import annotations

import argparse
import sys

from fkp.tracking import TAG_SWEEP, TAG_VARIANT


def sweep_rows(experiment: str) -> list[dict]:
    """One row per finished sweep variant (the latest run of each name), oldest first."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{TAG_SWEEP}` != '' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    rows: dict[str, dict] = {}
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        if "val_rmse" not in metrics or TAG_VARIANT not in tags:
            continue
        robust = {k.removeprefix("val_rmse."): v for k, v in metrics.items() if k.startswith("val_rmse.")}
        rows[tags[TAG_VARIANT]] = {
            "variant": tags[TAG_VARIANT],
            "val_rmse": metrics["val_rmse"],
            "worst": max(robust.items(), key=lambda kv: kv[1]) if robust else None,
            "minutes": metrics.get("train_seconds", 0.0) / 60,  # the train stage's clock includes a teacher
            "teacher": metrics.get("impute.teacher_val_rmse"),
        }
    return list(rows.values())


def render(rows: list[dict], reference: str | None) -> str:
    base = next((r["val_rmse"] for r in rows if r["variant"] == reference), None)
    lines = [
        "| variant | val RMSE (px) | vs " + (reference or "-") + " | worst distortion (px) | train min |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        delta = f"{(r['val_rmse'] / base - 1) * 100:+.1f} %" if base else ""
        worst = f"{r['worst'][1]:.3f} ({r['worst'][0]})" if r["worst"] else ""
        lines.append(f"| {r['variant']} | {r['val_rmse']:.4f} | {delta} | {worst} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fkp")
    parser.add_argument("--reference", help="variant the others are compared with")
    args = parser.parse_args()
    from fkp import tracking

    tracking.configure(experiment=args.experiment)
    rows = sweep_rows(args.experiment)
    if not rows:
        sys.exit(f"benchmarks.sweep_table: no finished sweep variant in experiment {args.experiment!r}")
    print(render(rows, args.reference))


if __name__ == "__main__":
    main()
