"""What a retrain depends on, condensed to one digest, so an unchanged retrain can be skipped.

A fingerprint has three parts: the raw data content (:func:`fkp.tracking.data_hash`), the params
that shape the model, and the code (the ``fkp`` package and the expectation suites). The sample
section is left out of the params: it only matters through the data it generated, which the data
part already covers. A successful retrain stores its fingerprint as tags on its MLflow run; the
store is then the single place that knows what the last retrain was built from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from fkp.params import Params, flatten
from fkp.tracking import data_hash

TAG = "fkp.fingerprint"
TAG_DATA = "fkp.fingerprint.data"
TAG_PARAMS = "fkp.fingerprint.params"
TAG_CODE = "fkp.fingerprint.code"

#: params sections that do not reach the model except through the data
IGNORED_PARAM_PREFIXES = ("sample.",)

_PACKAGE_DIR = Path(__file__).resolve().parent
_SUITES_DIR = _PACKAGE_DIR.parent / "expectations"  # where fkp.expectations reads its suites


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    data: str
    params: str
    code: str

    @property
    def digest(self) -> str:
        return _md5(f"{self.data} {self.params} {self.code}")

    def tags(self) -> dict[str, str]:
        return {TAG: self.digest, TAG_DATA: self.data, TAG_PARAMS: self.params, TAG_CODE: self.code}

    def changes_since(self, previous: Fingerprint | None) -> list[str]:
        """Which parts differ from ``previous`` (all of them when there is none)."""
        parts = ("data", "params", "code")
        if previous is None:
            return list(parts)
        return [p for p in parts if getattr(self, p) != getattr(previous, p)]


def params_digest(params: Params) -> str:
    values = {k: v for k, v in flatten(params).items() if not k.startswith(IGNORED_PARAM_PREFIXES)}
    return _md5(json.dumps(values, sort_keys=True, default=str))


def code_digest(package_dir: Path = _PACKAGE_DIR, suites_dir: Path = _SUITES_DIR) -> str:
    """md5 over the package's Python sources and the expectation suites (names and contents)."""
    digest = hashlib.md5(usedforsecurity=False)
    for root, pattern in ((package_dir, "*.py"), (suites_dir, "*.json")):
        for path in sorted(root.rglob(pattern)) if root.is_dir() else []:
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def compute(raw_dir: str | Path, params: Params) -> Fingerprint:
    return Fingerprint(data=data_hash(raw_dir) or "no-data", params=params_digest(params), code=code_digest())


def last_recorded(experiment_id: str, client: MlflowClient | None = None) -> tuple[str, Fingerprint] | None:
    """``(run_id, fingerprint)`` of the newest run in the experiment that recorded one, or ``None``."""
    client = client or MlflowClient()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG}` LIKE '%'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    tags = runs[0].data.tags
    found = Fingerprint(tags.get(TAG_DATA, ""), tags.get(TAG_PARAMS, ""), tags.get(TAG_CODE, ""))
    if found.digest != tags.get(TAG):  # written by something else: treat as unknown
        return None
    return runs[0].info.run_id, found


def record(run_id: str, fingerprint: Fingerprint, client: MlflowClient | None = None) -> None:
    client = client or MlflowClient()
    for key, value in fingerprint.tags().items():
        client.set_tag(run_id, key, value)
