"""Benchmark: keypoints on real photos, scored as a client of ``fkp serve`` sees them.

Starts the real server (``fkp serve`` on a free loopback port) of the fkp tree under test and
posts every photo of a labelled photo set (``images/`` + ``labels.csv``), plus harder photos made
from it deterministically (:mod:`benchmarks.photo_data`: heavy JPEG, rotated heads, many small
faces in 1920x1080 and 3000x2000 canvases), once with 1 client and once with 4 concurrent clients.
Predicted faces are matched to labelled faces by the distance between their eye centres; a
labelled face is found when a prediction lies within half its outer-eye-corner distance. Reports
per set the share of faces found, the NME (mean keypoint error over the outer-eye-corner
distance), unmatched detections and latency; then photos/s and p50/p99 latency for the whole run
and for a 640x480 photo, the time and server memory for an 8000x6000 JPEG, and the server's peak
RSS (``VmHWM``). Writes its subsection of BENCHMARKS.md (between markers named by ``--label``).

    python -m benchmarks.photos --photos ../shared/data/youtube-faces-photos --model holdout.keras \
        --label haar --out BENCHMARKS.md

The server runs from the first ``PYTHONPATH`` entry holding an ``fkp`` package (else this
repository), so ``PYTHONPATH=../other-tree python -m benchmarks.photos ...`` measures that tree's
face detector. NME counts only people the model never trained on when the model has a
``<model>.heldout.json`` (:mod:`benchmarks.photo_model`); otherwise it is marked in-sample.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from benchmarks.markdown import load_average, splice
from benchmarks.photo_data import (
    SETS,
    BenchPhoto,
    eye_centre,
    make_sets,
    match_faces,
    nme,
    read_photo_set,
    single,
)
from benchmarks.photo_model import held_out_groups
from fkp.core.keypoints import KEYPOINT_NAMES
from fkp.orchestration.prefect_local import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
MAX_FACES = 20
STARTUP_TIMEOUT = 300
CONCURRENCY = (1, 4)


# --------------------------------------------------------------------------- pure scoring


def answer_points(answer: dict) -> list[np.ndarray]:
    """The (15, 2) keypoints of each face of a server answer."""
    return [
        np.array([face["keypoints"][k] for k in KEYPOINT_NAMES], dtype=np.float64) for face in answer["faces"]
    ]


def found_faces(answer: dict, photo: BenchPhoto) -> int:
    """How many of the photo's labelled faces the answer found."""
    return sum(
        m is not None for m in match_faces([eye_centre(p) for p in answer_points(answer)], photo.faces)
    )


@dataclass
class SetScore:
    photos: int = 0
    faces: int = 0
    found: int = 0
    unmatched: int = 0  # detections that match no labelled face
    errors: list[float] = field(default_factory=list)  # NME of found faces of held-out people
    latencies_ms: list[float] = field(default_factory=list)


def score_answers(
    posted: list[tuple[str, BenchPhoto]],
    answers: list[dict],
    latencies: list[float],
    held_out: set[int] | None,
) -> dict[str, SetScore]:
    """Per set: faces found, unmatched detections, NME of found faces (held-out people only if known)."""
    scores: dict[str, SetScore] = {}
    for (name, photo), answer, latency in zip(posted, answers, latencies, strict=True):
        s = scores.setdefault(name, SetScore())
        predicted = answer_points(answer)
        matches = match_faces([eye_centre(p) for p in predicted], photo.faces)
        s.photos += 1
        s.faces += len(photo.faces)
        s.found += sum(m is not None for m in matches)
        s.unmatched += len(predicted) - sum(m is not None for m in matches)
        s.latencies_ms.append(latency * 1e3)
        for truth, group, m in zip(photo.faces, photo.groups, matches, strict=True):
            if m is not None and (held_out is None or group in held_out):
                s.errors.append(nme(predicted[m], truth))
    return scores


# --------------------------------------------------------------------------- the server


def fkp_tree() -> Path:
    """The fkp tree whose server is measured: the first PYTHONPATH entry with an fkp package."""
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and (Path(entry) / "fkp" / "__init__.py").is_file():
            return Path(entry).resolve()
    return ROOT


def tree_commit(tree: Path) -> str:
    """``<branch>@<short commit>`` of a git tree (``+dirty`` with uncommitted changes), else its path."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{tree} (not a git tree)"
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('rev-parse', '--abbrev-ref', 'HEAD')}@{commit}{dirty}"


def peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


@contextlib.contextmanager
def serve(tree: Path, model: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``fkp serve`` of ``tree`` on a free port, as a user starts it; stopped (its group) after.

    The server's limits admit the 8000x6000 photo and up to :data:`MAX_FACES` faces.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "fkp.cli", "serve", "--model", model, "--port", str(port), "--poll", "0"]
    command += ["--max-faces", str(MAX_FACES), "--max-megapixels", "50", "--max-body-mb", "50"]
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as sink:
        process = subprocess.Popen(  # dies with this process, even killed with SIGKILL
            command,
            cwd=tree,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"fkp serve exited ({process.returncode}):\n{log.read_text(errors='replace')}"
                )
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                urllib.request.urlopen(f"{url}/healthz", timeout=5).close()
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"fkp serve never answered /healthz; its log: {log}")
            time.sleep(0.3)
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- the clients


def post_all(url: str, photos: list[bytes], concurrency: int) -> tuple[list[dict], list[float], float]:
    """Each photo posted once by ``concurrency`` keep-alive clients; (answers, latencies s, wall s).

    A photo without a face (422 ``no_face_found``) is an answer with no faces; any other refusal
    stops the benchmark, naming the photo.
    """
    host = urlsplit(url)
    answers: list[dict] = [{}] * len(photos)
    latencies = [0.0] * len(photos)
    failures: list[str] = []
    next_index = iter(range(len(photos)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=300)
        while not failures:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t0 = time.perf_counter()
            connection.request(
                "POST", f"/v1/keypoints?faces={MAX_FACES}", photos[i], {"Content-Type": "image/jpeg"}
            )
            response = connection.getresponse()
            payload = json.loads(response.read())
            latencies[i] = time.perf_counter() - t0
            if response.status == 200:
                answers[i] = payload
            elif response.status == 422 and payload.get("error", {}).get("code") == "no_face_found":
                answers[i] = {"faces": []}
            else:
                failures.append(f"photo {i}: HTTP {response.status} {payload}")
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"benchmarks.photos: the server refused {failures[0]}")
    return answers, latencies, time.perf_counter() - start


def speed_row(what: str, concurrency: int, latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {
        "what": what,
        "concurrency": concurrency,
        "photos": len(latencies),
        "photos_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    """Post everything, score it; the report as a dict (see :func:`render`)."""
    labelled = read_photo_set(args.photos)
    if args.limit:
        labelled = labelled[: args.limit]
    posted = list(make_sets(labelled, args.seed, args.crowds))
    throughput = single("640x480", labelled[0], (640, 480), 60.0)
    big_w, big_h = args.big
    big = single(f"{big_w}x{big_h}", labelled[0], (big_w, big_h), big_w / 25)
    held_out = held_out_groups(Path(args.model)) if Path(args.model).is_file() else None
    tree = fkp_tree()
    report: dict = {"tree": str(tree), "commit": tree_commit(tree), "model": args.model, "speed": []}
    report["held_out"] = held_out is not None
    with (
        tempfile.TemporaryDirectory(prefix="fkp-photobench-") as tmp,
        serve(tree, args.model, Path(tmp) / "serve.log") as (url, process),
    ):
        post_all(url, [throughput.data] * 4, 1)  # warm-up: the model's first call traces it
        bodies = [p.data for _, p in posted]
        for concurrency in CONCURRENCY:
            answers, latencies, wall = post_all(url, bodies, concurrency)
            report["speed"].append(speed_row("all benchmark photos", concurrency, latencies, wall))
            if concurrency == 1:
                scores = score_answers(posted, answers, latencies, held_out)
        for concurrency in CONCURRENCY:
            _, latencies, wall = post_all(url, [throughput.data] * args.repeat * concurrency, concurrency)
            report["speed"].append(speed_row("one 640x480 photo", concurrency, latencies, wall))
        report["peak_rss_mb"] = peak_rss_mb(process.pid)
        big_answers, big_latencies, _ = post_all(url, [big.data] * 3, 1)
        report["big"] = {
            "size": f"{big_w}x{big_h}",
            "jpeg_mb": len(big.data) / 1e6,
            "median_s": float(np.median(big_latencies)),
            "found": sum(found_faces(a, big) for a in big_answers),
            "peak_rss_mb": peak_rss_mb(process.pid),
        }
    report["sets"] = {
        name: {
            "photos": s.photos,
            "faces": s.faces,
            "found_pct": 100 * s.found / max(1, s.faces),
            "unmatched": s.unmatched,
            "scored": len(s.errors),
            "nme_mean": float(np.mean(s.errors)) if s.errors else None,
            "nme_median": float(np.median(s.errors)) if s.errors else None,
            "p50_ms": float(np.percentile(s.latencies_ms, 50)),
        }
        for name, s in scores.items()
    }
    report["load"] = load_average()
    return report


def markers(label: str) -> tuple[str, str]:
    return f"<!-- photos:{label}:begin -->", f"<!-- photos:{label}:end -->"


def render(report: dict, label: str, command: str) -> str:
    """This run's subsection of BENCHMARKS.md."""
    begin, end = markers(label)
    sample = (
        "people the model never trained on"
        if report["held_out"]
        else "all people: **in-sample** if the model trained on them (no `<model>.heldout.json`)"
    )
    lines = [
        begin,
        f"### {label}: `{report['commit']}`",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Model `{Path(report['model']).name}`; NME over found faces of {sample}. "
        f"Machine load (1/5/15 min) at the end: {report['load']}.",
        "",
        "| set | photos | faces | found | NME mean / median (faces scored) | unmatched detections | p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["sets"].items():
        error = f"{s['nme_mean']:.4f} / {s['nme_median']:.4f} ({s['scored']})" if s["scored"] else "-"
        lines.append(
            f"| {name}: {SETS[name]} | {s['photos']} | {s['faces']} | {s['found_pct']:.1f} % | {error} "
            f"| {s['unmatched']} | {s['p50_ms']:.0f} |"
        )
    lines += ["", "| photos posted | clients | photos/s | p50 / p99 latency (ms) |", "|---|---|---|---|"]
    for r in report["speed"]:
        lines.append(
            f"| {r['what']} ({r['photos']}) | {r['concurrency']} | {r['photos_per_s']:.1f} "
            f"| {r['p50_ms']:.0f} / {r['p99_ms']:.0f} |"
        )
    big = report["big"]
    lines += [
        "",
        f"Server peak RSS (VmHWM) after all of the above: {report['peak_rss_mb']:.0f} MB. "
        f"One {big['size']} JPEG ({big['jpeg_mb']:.1f} MB, one face): {big['median_s']:.2f} s (median of 3), "
        f"face found {big['found']}/3, server peak RSS then {big['peak_rss_mb']:.0f} MB.",
        end,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="a photo set: images/ + labels.csv")
    parser.add_argument("--model", required=True, help="a .keras file or models:/ URI for fkp serve")
    parser.add_argument("--label", default="detector", help="names this run's subsection of --out")
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to write this run's subsection into")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crowds", type=int, default=40, help="1920x1080 canvases (half as many 3000x2000)")
    parser.add_argument("--repeat", type=int, default=100, help="640x480 posts per client")
    parser.add_argument("--big", type=lambda s: tuple(map(int, s.split("x"))), default=(8000, 6000))
    parser.add_argument("--limit", type=int, help="only the first N labelled photos")
    args = parser.parse_args()
    command = "python -m benchmarks.photos " + shlex.join(sys.argv[1:])
    if os.environ.get("PYTHONPATH") and fkp_tree() != ROOT:
        command = f"PYTHONPATH={shlex.quote(str(fkp_tree()))} {command}"
    report = run(args)
    text = render(report, args.label, command)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.out:
        existing = args.out.read_text() if args.out.exists() else ""
        begin, end = markers(args.label)
        args.out.write_text(splice(existing, text, begin, end, append=True))
    print(text)


if __name__ == "__main__":
    main()
