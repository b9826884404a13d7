"""The ``fkp`` command line: one subcommand per pipeline step.

Each subcommand is thin glue over one function in the library, the same function the
DVC stages and the Prefect tasks call. Heavy imports (TensorFlow, MLflow, GX) happen
inside the handlers, so ``fkp --help`` and the data tools start instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from fkp import quiet
from fkp.orchestration.repo_lock import PipelineBusy
from fkp.safety.leftovers import exit_cleanly_on_signals, remove_stale
from fkp.safety.messages import describe

TRACEBACK_ENV = "FKP_TRACEBACK"

Handler = Callable[[argparse.Namespace], int]

#: printed by ``fkp --help``: scripts and schedulers branch on these
EXIT_CODES = (
    "exit codes: 0 done; 1 bad input; 2 usage or missing Kaggle credentials; 3 no face in a photo; "
    "4 MLflow store; 5 disk or permissions; 6 fkp serve: port in use; 75 pipeline busy (another run "
    "holds it); 128+N stopped by signal N"
)
#: what differs between experiments, readable at 120 columns (no dependency hashes, no dates)
EXP_SHOW = "dvc exp show --only-changed --drop '.*/|metrics.json|Created'"

#: the commands that are DVC stages: run by hand, each holds DVC's repository lock (as a `dvc` command would)
PIPELINE_STEPS = ("sample", "validate", "prepare", "impute", "train", "evaluate", "register", "predict")


def _params(args: argparse.Namespace):
    from fkp.params import load_params

    return load_params(args.params)


def cmd_sample(args: argparse.Namespace) -> int:
    from fkp.synthetic.sample import FULL_SIZE, generate_sample, write_sample

    p = _params(args).sample
    n_train, n_test = FULL_SIZE if args.full else (args.n_train or p.n_train, args.n_test or p.n_test)
    seed = p.seed if args.seed is None else args.seed
    print(f"generating a synthetic sample: {n_train} training and {n_test} test faces (seed {seed})")
    paths = write_sample(args.out, generate_sample(n_train, n_test, seed))
    for path in paths:
        print(f"  wrote {path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from fkp.core.plots import show_csv

    out = show_csv(args.csv, args.out, n=args.n, seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fkp.stages.validate import SUMMARY_HTML, validate_raw_dir

    report = validate_raw_dir(args.raw_dir, args.report_dir)
    print(report.summary())
    print(f"every file, check and failure on one page: {args.report_dir / SUMMARY_HTML}")
    return 0 if report.success else 1


def cmd_data_import(args: argparse.Namespace) -> int:
    from fkp.sources import import_dir

    remove_stale([args.dest.parent])
    import_dir(args.src, args.dest, track=not args.no_dvc, limits=_params(args).limits)
    return 0


def cmd_data_kaggle(args: argparse.Namespace) -> int:
    from fkp.sources import KaggleCredentialsError, download_kaggle

    try:
        download_kaggle(args.dest, track=not args.no_dvc)
    except KaggleCredentialsError as exc:
        print(f"fkp data kaggle: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from fkp.stages.prepare import prepare

    prepare(args.raw_dir, args.out, _params(args).split)
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    from fkp.stages.impute import run_impute

    strategy = args.strategy or _params(args).impute.strategy
    run_impute(args.prepared, args.out, strategy)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fkp.stages.train import run_train

    run_train(_params(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fkp.stages.evaluate import run_evaluate

    run_evaluate(_params(args))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from fkp.stages.register import run_register

    run_register(_params(args))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from fkp.orchestration.baseline import check, report

    stale = check(".")
    print(report(stale))
    return 1 if stale else 0


def _model(args: argparse.Namespace) -> str:
    """``--model``, else the champion of the registered model ``params.yaml`` names."""
    if args.model:
        return args.model
    from fkp.tracking.registry import champion_uri

    return champion_uri(_params(args).mlflow.registered_model)


def cmd_predict(args: argparse.Namespace) -> int:
    args.model = _model(args)
    tta = _params(args).train.tta_flip
    if bool(args.images) == bool(args.data):
        print("fkp predict: give either --data DIR (test.csv) or image files, not both", file=sys.stderr)
        return 2
    if args.data:
        from fkp.core.kaggle_csv import ID_LOOKUP_CSV, TEST_CSV
        from fkp.stages.predict import predict_test

        predict_test(args.model, args.data / TEST_CSV, args.data / ID_LOOKUP_CSV, args.out, tta_flip=tta)
        return 0
    return _predict_photos(args, tta)


def _predict_photos(args: argparse.Namespace, tta: bool) -> int:
    """``fkp predict photo.jpg ...``: not the DVC stage (that is ``--data``), so kept out of its handler."""
    from fkp.serving.photos import NoFaceFoundError, predict_photos

    try:
        max_pixels = _params(args).limits.photo_max_pixels
        results = predict_photos(args.model, args.images, args.out, tta_flip=tta, max_pixels=max_pixels)
    except NoFaceFoundError as exc:
        print(f"fkp predict: {exc}", file=sys.stderr)
        return 3
    for result in results:
        n = result["faces_detected"]
        faces = f"{n} faces, the largest" if n > 1 else "1 face"
        print(f"{result['image']}: {faces} -> {result['json']}, drawn in {result['overlay']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fkp.serving.web.limits import Limits
    from fkp.serving.web.server import serve

    args.model = _model(args)
    limits = Limits(
        round(args.max_body_mb * 1024 * 1024),
        round(args.max_megapixels * 1e6),
        args.max_faces,
        args.body_timeout,
    )
    tta = _params(args).train.tta_flip
    serve(args.model, host=args.host, port=args.port, limits=limits, poll_seconds=args.poll, tta_flip=tta)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from fkp.orchestration.stack.cli import run

    return run(args)


def knobs_epilog(prefixes: tuple[str, ...]) -> str:
    """The params a stage reads (with their shipped defaults) and how to change them.

    Listed from the typed params themselves, so the help never drifts from ``params.yaml``'s schema.
    """
    from fkp.params import Params, flatten

    keys = [(k, v) for k, v in flatten(Params()).items() if k.startswith(prefixes)]
    width = max(len(k) for k, _ in keys)
    example = next((k for k, _ in keys if k.startswith("train.lr")), keys[0][0])
    lines = [f"  {k:<{width}}  {v}" for k, v in keys]
    return "\n".join(
        [
            "settings (in params.yaml, shipped defaults shown; global --params picks another file):",
            *lines,
            "",
            f"change one for a single run:  dvc exp run -S {example}=<value>  (then: {EXP_SHOW})",
            "or edit params.yaml and run:  dvc repro",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fkp", description="fkp: facial keypoints, one subcommand per pipeline step.", epilog=EXIT_CODES
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    verbose_help = (
        "also show the libraries' own output (TensorFlow, MLflow, ...) and the traceback of a failure; "
        f"or set {quiet.VERBOSE_ENV}=1"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Handler, help_: str, parent=sub, knobs: tuple[str, ...] = ()
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=knobs_epilog(knobs) if knobs else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler, pipeline_step=name in PIPELINE_STEPS)
        # accepted after the command too (fkp train -v); SUPPRESS keeps the global flag's value otherwise
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
        return p

    p = add("sample", cmd_sample, "write a synthetic sample in the exact Kaggle CSV format")
    p.add_argument("--out", required=True, type=Path, help="folder for the four Kaggle CSVs")
    p.add_argument("--n-train", type=int, help="training faces (default: params sample.n_train)")
    p.add_argument("--n-test", type=int, help="test faces (default: params sample.n_test)")
    p.add_argument("--seed", type=int, help="random seed (default: params sample.seed)")
    p.add_argument("--full", action="store_true", help="Kaggle's full size: 7049 training, 1783 test")

    p = add("show", cmd_show, "draw a grid of faces with their keypoints (PNG)")
    p.add_argument("csv", type=Path, help="a Kaggle-format training.csv")
    p.add_argument("--out", type=Path, default=Path("reports/faces.png"))
    p.add_argument("-n", type=int, default=16, help="number of faces")
    p.add_argument("--seed", type=int, default=0, help="which faces (random pick)")

    p = add("validate", cmd_validate, "validate raw Kaggle CSVs with the Great Expectations suites")
    p.add_argument("raw_dir", type=Path, help="folder with training.csv, test.csv, IdLookupTable.csv")
    p.add_argument("--report-dir", type=Path, default=Path("reports/validation"))

    data = add("data", lambda a: 0, "bring real Kaggle data in, tracked by DVC")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SOURCE")
    p = add("import", cmd_data_import, "import Kaggle files you downloaded (folder or zip)", data_sub)
    p.add_argument("src", type=Path)
    p.add_argument("--dest", type=Path, default=Path("data/raw/kaggle"))
    p.add_argument("--no-dvc", action="store_true", help="copy only, do not `dvc add`")
    p = add("kaggle", cmd_data_kaggle, "download the competition files with the Kaggle API", data_sub)
    p.add_argument("--dest", type=Path, default=Path("data/raw/kaggle"))
    p.add_argument("--no-dvc", action="store_true", help="copy only, do not `dvc add`")

    p = add(
        "prepare",
        cmd_prepare,
        "parse the CSVs into a cached .npz and fix the train/val split",
        knobs=("split.",),
    )
    p.add_argument("raw_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("data/prepared"))

    p = add(
        "impute",
        cmd_impute,
        "fill or mask the missing training labels (ffill | mask | drop | pseudo)",
        knobs=("impute.strategy",),
    )
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=Path("data/prepared/targets.npz"))
    p.add_argument(
        "--strategy", choices=("ffill", "mask", "drop", "pseudo"), help="default: params impute.strategy"
    )

    add(
        "train",
        cmd_train,
        "train the CNN on data/prepared and log the run (params, curves, model) to MLflow",
        knobs=("data.source", "impute.", "model.", "train.", "mlflow.experiment"),
    )
    add(
        "evaluate",
        cmd_evaluate,
        "score the model on the validation split; write metrics.json and plots",
        knobs=("train.tta_flip", "mlflow.experiment"),
    )
    add(
        "register",
        cmd_register,
        "register the model; make it champion only if it beats the current one",
        knobs=("mlflow.registered_model", "mlflow.candidate_max_rmse", "train.tta_flip"),
    )

    add(
        "baseline",
        cmd_baseline,
        "check that the committed dvc.lock and metrics.json still match the code and params "
        "(no stage runs); exit 1 and name the stale stages otherwise",
    )

    p = add("predict", cmd_predict, "predict keypoints for test.csv (Kaggle submission) or for photos")
    p.add_argument("images", nargs="*", type=Path, help="photos (PNG/JPEG); omit with --data")
    p.add_argument("--data", type=Path, help="folder with test.csv and IdLookupTable.csv")
    p.add_argument(
        "--model",
        help="a .keras file or an MLflow model URI (default: the champion of mlflow.registered_model)",
    )
    p.add_argument("--out", type=Path, default=Path("reports/predict"))

    p = add("serve", cmd_serve, "web page and photo API (POST /v1/keypoints) for a model")
    p.add_argument("--model", help="as for predict")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between alias checks; 0: never")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest upload (default: %(default)s)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest photo (default: %(default)s)")
    p.add_argument("--max-faces", type=int, default=10, help="most faces per photo (default: %(default)s)")
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds an upload may stall, or its headers take (default: %(default)s)",
    )

    p = add("stack", cmd_stack, "start, stop or check the team stack (PostgreSQL, MLflow, Prefect, Dask)")
    from fkp.orchestration.stack.cli import add_arguments

    add_arguments(p)
    return parser


def _show_progress() -> None:
    """Send fkp's own INFO messages (progress of long steps) to stderr, not every library's."""
    logger = logging.getLogger("fkp")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _pipeline_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """DVC's repository lock for a pipeline step run by hand, so it never writes under a running flow.

    Under DVC (``DVC_STAGE`` set) the step is part of the run that holds the pipeline: nothing to take.
    Outside a DVC repository there is no pipeline to guard.
    """
    if not getattr(args, "pipeline_step", False) or os.environ.get("DVC_STAGE"):
        return contextlib.nullcontext()
    if args.command == "predict" and not args.data:  # keypoints on photos: no pipeline output written
        return contextlib.nullcontext()
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from fkp.orchestration import repo_lock

    try:
        root = Repo.find_root()
    except NotDvcRepoError:
        return contextlib.nullcontext()
    return repo_lock.hold(root, owner=f"fkp {args.command}")


#: loggers that print a traceback for an error they then raise; the one-line message says it once
_RERAISING_LOGGERS = ("mlflow.store.db.utils",)


def _quiet_reraised_errors() -> None:
    for name in _RERAISING_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a known failure prints one line and returns its exit code.

    Every command first removes what killed fkp processes left behind (temporaries), and turns
    SIGTERM/SIGHUP into a clean exit, so what a step was writing is removed and its MLflow run
    ends FAILED. The failures :func:`fkp.safety.messages.describe` knows are printed as one line
    (``-v`` or ``FKP_TRACEBACK=1`` adds the traceback); anything else is a bug and keeps it.
    """
    args = build_parser().parse_args(argv)
    quiet.install(verbose=args.verbose or None)
    _show_progress()
    verbose = args.verbose or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    if not verbose:
        _quiet_reraised_errors()
    if threading.current_thread() is threading.main_thread():
        exit_cleanly_on_signals()
    remove_stale()
    try:
        with _pipeline_lock(args):
            return args.handler(args)
    except PipelineBusy as exc:
        print(f"fkp {args.command}: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again when the other run has finished
    except BaseException as exc:
        failure = describe(exc)
        if failure is None:
            raise
        if verbose:
            traceback.print_exc()
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
        print(f"fkp {command}: {failure.message}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
