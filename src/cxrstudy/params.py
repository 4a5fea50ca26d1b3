"""The schema of `params.yaml`, validated once at start-up into typed, frozen objects.

Every stage loads the whole file through `load_params`, so a mistyped key or an out-of-range value stops the
pipeline before any work starts, with a message that names the parameter and what it accepts.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrstudy.errors import InputError
from cxrstudy.monitoring import MonitorParams
from cxrstudy.nih import NihParams

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PhantomParams(_Section):
    """The embedded, NIH-shaped synthetic sample."""

    n_images: Annotated[int, Field(ge=20, le=5000)] = 1400
    image_size: Annotated[int, Field(ge=64, le=1024)] = 256
    seed: int = 2017
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


class IngestParams(_Section):
    source: Literal["phantom", "nih"] = "phantom"
    phantom: PhantomParams = PhantomParams()
    nih: NihParams = NihParams()


class PreprocessParams(_Section):
    clahe: bool = True
    clip_limit: Annotated[float, Field(gt=0.0, le=40.0)] = 2.0
    tile_grid: Annotated[int, Field(ge=1, le=64)] = 8
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    # px at which CLAHE runs: 0 = the source resolution; N = after an area downscale to N (>= image_size)
    clahe_size: Annotated[int, Field(ge=0, le=4096)] = 0
    workers: Annotated[int, Field(ge=0, le=256)] = 0

    @model_validator(mode="after")
    def _clahe_size_not_below_stored(self) -> PreprocessParams:
        if self.clahe_size and self.clahe_size < self.image_size:
            raise ValueError(f"clahe_size ({self.clahe_size}) must be 0 (the source resolution) or at least "
                             f"image_size ({self.image_size})")
        return self


class SplitParams(_Section):
    method: Literal["official", "random-patient"] = "official"
    seed: int = 0
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.9)] = 0.2


class LossParams(_Section):
    name: Literal["focal", "bce", "weighted_bce"] = "focal"
    # torchvision convention: positives weighted by alpha, negatives by 1 - alpha; -1 turns weighting off.
    # (The study's lineage multiplied the whole loss by alpha=1, which also means "no weighting".)
    alpha: float = -1.0
    gamma: Annotated[float, Field(ge=0.0, le=10.0)] = 2.0

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, value: float) -> float:
        if value != -1.0 and not 0.0 < value < 1.0:
            raise ValueError("alpha must be -1 (no class weighting) or strictly between 0 and 1")
        return value


class AugmentParams(_Section):
    crop_scale_min: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    hflip: bool = True
    brightness: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class TrainParams(_Section):
    pretrained: bool = False
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    epochs: Annotated[int, Field(ge=1, le=1000)] = 8
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-5
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    loss: LossParams = LossParams()
    augment: AugmentParams = AugmentParams()
    channels_last: bool = True
    num_workers: Annotated[int, Field(ge=0, le=64)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    compile: bool = False
    threads: Annotated[int, Field(ge=0, le=512)] = 0
    # Deterministic algorithms: the same seed on the same machine gives the same numbers (a little slower on GPU).
    deterministic: bool = True
    # Negative control: train on labels permuted across images; test AUROC must then stay near 0.5.
    shuffle_labels: bool = False


class EvaluateParams(_Section):
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 128


class ReportParams(_Section):
    bootstrap: Annotated[int, Field(ge=0, le=100000)] = 1000
    bootstrap_seed: int = 0
    clahe_samples: Annotated[int, Field(ge=1, le=12)] = 3


class Params(_Section):
    seeds: list[int]
    ingest: IngestParams = IngestParams()
    preprocess: PreprocessParams = PreprocessParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    monitor: MonitorParams = MonitorParams()

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("seeds must list at least one integer seed, e.g. [12, 22, 32, 42]")
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        if dupes:
            raise ValueError(f"seeds must be unique; repeated: {dupes}")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be non-negative integers")
        return seeds

    @model_validator(mode="after")
    def _sizes_agree(self) -> Params:
        if self.train.image_size > self.preprocess.image_size:
            raise ValueError(
                f"train.image_size ({self.train.image_size}) must be <= preprocess.image_size "
                f"({self.preprocess.image_size}): training crops the processed images, it never upsamples them"
            )
        return self


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _redact(value: Any) -> Any:
    """A URL's user:password@ is never echoed back (the message goes to logs)."""
    return _USERINFO.sub("***@", value) if isinstance(value, str) else value


def _accepted_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys accepted in the section that holds `loc` (empty when it is not a section)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _initials(key: str) -> str:
    return "".join(word[0] for word in key.split("_") if word)


def _guess(key: str, accepted: list[str]) -> str | None:
    """The accepted key that `key` most likely meant: an abbreviation either way (learning_rate / lr), or a close
    spelling."""
    for name in accepted:
        if len(name) > 1 and (_initials(key) == name or _initials(name) == key):
            return name
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    return close[0] if close else None


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} invalid parameter(s):"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            accepted = _accepted_keys(item["loc"])
            likely = _guess(str(item["loc"][-1]), accepted)
            guess = f" (did you mean {likely!r}?)" if likely else ""
            known = f"; accepted here: {', '.join(accepted)}" if accepted else ""
            lines.append(f"  {where}: unknown parameter{guess}{known}")
        else:
            got = _redact(item.get("input"))
            lines.append(f"  {where}: {item['msg']} (got {got!r})")
    return "\n".join(lines)


def parse_params(raw: object, source: Path = DEFAULT_PARAMS) -> Params:
    """Validate an already-parsed YAML document; raise `InputError` naming every bad key."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise InputError(_format_error(source, err)) from None


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate `params.yaml`."""
    if not path.is_file():
        raise InputError(f"{path}: parameters file not found (run from the project root, or pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
