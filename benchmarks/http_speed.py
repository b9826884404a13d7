"""Benchmark: photos/s and latency of ``fkp serve`` over loopback HTTP, 640x480 JPEGs.

Starts the real server (``fkp serve``, uvicorn, 127.0.0.1) on a free port, then a bounded
load generator: ``--concurrency`` client threads, each sending one photo at a time on a
keep-alive connection for ``--seconds``; at most that many requests are ever in flight. It
reports, per concurrency, photos/s, the p50/p99 latency seen by the client, and the mean
time the server spent decoding, detecting and predicting. Photos are synthetic sample faces
rendered larger (288 px) into 640x480 pictures, each with one face to find.

    python -m benchmarks.http_speed --model models/model.keras

Without ``--model`` an untrained network of the default architecture (``params.yaml``
``model``) is used: its speed is that of the trained one, only its keypoints are wrong.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from tests.web_support import Photo, running_server, synthetic_photos

ROOT = Path(__file__).resolve().parents[1]


def _untrained_model(path: Path) -> Path:
    from fkp.core.models import build_model
    from fkp.params import load_params

    build_model(load_params(ROOT / "params.yaml").model, seed=0).save(path)
    return path


def load(url: str, photos: list[Photo], *, concurrency: int, seconds: float) -> dict:
    """Drive the server with ``concurrency`` sequential clients for ``seconds``."""
    host = urlsplit(url)
    latencies: list[float] = []
    server_ms: list[dict] = []
    errors: list[int] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        i = offset
        while time.perf_counter() < stop_at:
            body = photos[i % len(photos)].data
            i += 1
            t0 = time.perf_counter()
            connection.request("POST", "/v1/keypoints", body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                    server_ms.append(json.loads(payload)["timing_ms"])
                else:
                    errors.append(response.status)
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "photos": len(latencies),
        "errors": len(errors),
        "photos_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "server_ms": {k: float(np.mean([t[k] for t in server_ms])) for k in ("decode", "detect", "predict")},
    }


def markdown(report: dict) -> str:
    lines = [
        "| concurrent clients | photos/s | p50 latency (ms) | p99 latency (ms) "
        "| server: decode / detect / predict (ms) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        s = r["server_ms"]
        lines.append(
            f"| {r['concurrency']} | {r['photos_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {s['decode']:.1f} / {s['detect']:.1f} / {s['predict']:.1f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .keras file or models:/ URI (default: untrained default arch)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--photos", type=int, default=8, help="distinct photos, sent in turn")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()

    photos = synthetic_photos(args.photos)
    assert all((p.width, p.height) == (640, 480) for p in photos)
    with tempfile.TemporaryDirectory(prefix="fkp-http-") as tmp:
        model = args.model or str(_untrained_model(Path(tmp) / "untrained.keras"))
        with running_server(["--model", model, "--poll", "0"], Path(tmp) / "serve.log", cwd=ROOT) as server:
            load(server.url, photos, concurrency=1, seconds=2.0)  # warm-up
            runs = [load(server.url, photos, concurrency=c, seconds=args.seconds) for c in args.concurrency]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "model": args.model or "untrained default architecture",
        "runs": runs,
    }
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
