"""Typed view of ``params.yaml``: one dataclass per section, defaults = the shipped defaults.

DVC tracks the YAML keys each stage reads; code reads them through these classes so a
typo in a key fails loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DataParams:
    source: str = "sample"  # sample | kaggle: which folder under data/raw/ feeds the pipeline


@dataclass(frozen=True)
class SampleParams:
    n_train: int = 1200
    n_test: int = 200
    seed: int = 0


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class ImputeParams:
    strategy: str = "mask"  # ffill | mask | drop | pseudo
    teacher_epochs: int = 80  # pseudo: epochs of the teacher (the configured network, trained as mask)
    max_disagreement: float = 1.5  # pseudo: px between the teacher's plain and mirrored guess to accept it


@dataclass(frozen=True)
class ModelParams:
    arch: str = "lean"  # lean | seed
    width: int = 24  # channels of the first conv (seed: of the first conv pair)
    depth: int = 2  # lean: separable blocks per stage
    head: str = "softargmax"  # lean: softargmax | dense
    head_channels: int = 32  # lean: channels of the head conv
    head_skip: bool = False  # lean softargmax: also feed the head the 12x12 stage (finer positions)
    dropout: float = 0.1


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool = True
    flip: bool = True
    mirror_x: float = 97.3  # a mirrored image maps keypoint x to mirror_x - x (96: pixel i spans [i, i+1))
    shift_px: float = 3.0
    rotate_deg: float = 15.0
    scale: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    # Camera degradations, each the probability that an image gets it (ranges: fkp/core/augment.py).
    blur: float = 0.12
    noise: float = 0.12
    jpeg: float = 0.12
    gamma: float = 0.15
    occlusion: float = 0.1


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 150
    batch_size: int = 64
    lr: float = 6e-3
    lr_schedule: str = "cosine"  # cosine (after linear warm-up) | constant
    warmup_epochs: int = 2
    weight_decay: float = 1e-2
    loss: str = "wing"  # wing | mse | mae (all masked: missing targets are ignored)
    ema: float = 0.99  # momentum of an exponential moving average of the weights (0: off)
    patience: int = 25
    seed: int = 42
    tta_flip: bool = False  # flip averaging: ~0.07 px better, half the inference speed
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "fkp"
    registered_model: str = "facial-keypoints-cnn"
    # px: a model becomes a registry version only below this; None: only if it beats the mean face
    candidate_max_rmse: float | None = None


@dataclass(frozen=True)
class LimitsParams:
    """Bounds on untrusted input, checked before the expensive part (decoding, extracting, predicting)."""

    photo_max_pixels: int = 50_000_000  # width x height from the header, before decoding
    zip_max_members: int = 100  # entries per archive (Kaggle's zip of zips: 4 + 2)
    zip_max_member_bytes: int = 1 << 30  # uncompressed size of one entry (Kaggle's training.csv: 238 MB)
    zip_max_total_bytes: int = 2 << 30  # uncompressed size of what one import extracts (all its zips)
    zip_max_ratio: float = 200.0  # uncompressed / compressed size of an entry (pixel CSVs: ~3)
    csv_max_bytes: int = 1 << 30  # one imported CSV
    serve_max_batch: int = 1024  # rows per request to the served model


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    sample: SampleParams = field(default_factory=SampleParams)
    split: SplitParams = field(default_factory=SplitParams)
    impute: ImputeParams = field(default_factory=ImputeParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)
    limits: LimitsParams = field(default_factory=LimitsParams)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"params: unknown key(s) {unknown} in section {where!r}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        f = known[name]
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if nested is not None and dataclasses.is_dataclass(nested):
            kwargs[name] = _build(nested, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> Params:
    """Build :class:`Params` from a nested dict; unknown keys are an error."""
    return _build(Params, values or {}, "params")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read ``params.yaml``; a missing file means all defaults."""
    path = Path(path)
    if not path.exists():
        return Params()
    return from_dict(yaml.safe_load(path.read_text()) or {})


def flatten(params: Params) -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}``: the form MLflow params and ``dvc exp run -S`` use."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(f"{key}.", value)
            else:
                out[key] = value

    walk("", params)
    return out
