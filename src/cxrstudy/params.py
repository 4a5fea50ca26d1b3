"""The schema of `params.yaml`, validated once at start-up into typed, frozen objects.

Every stage loads the whole file through `load_params`, so a mistyped key or an out-of-range value stops the
pipeline before any work starts, with a message that names the parameter and what it accepts.

The schema has no defaults of its own: `params.yaml` is the one place where values are set, and a profile
(`configs/*.yaml`) lists only what it changes on top of it (`cxrstudy profile`). This module imports nothing of the
project but `errors`, so that every other module can import it and nothing imports back up.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from cxrstudy.errors import InputError, shown_address
from cxrstudy.ingestschema import (
    IngestParams,
    no_credentials,
)
from cxrstudy.ingestschema import Section as _Section
from cxrstudy.yamlfile import read_yaml

DEFAULT_PARAMS = Path("params.yaml")
OFFICIAL_BASE_URL = "https://nihcc.box.com/shared/static/"
# DenseNet-121 halves the resolution five times before its last pooling: below 32 px a feature map vanishes.
MIN_TRAIN_SIZE = 32


class NumericsParams(_Section):
    """What decides the numbers on a CPU, pinned before torch, NumPy or OpenCV load (`cxrstudy.numerics`)."""

    # avx2: the same kernels on every x86-64 CPU with AVX2, Intel or AMD, with or without AVX-512 | native: the
    # fastest kernels of this machine, so the numbers depend on the CPU model.
    isa: Literal["avx2", "native"]
    # CPU threads of every stage (torch, OpenMP, MKL, OpenBLAS, OpenCV); 0 = one per core (machine-dependent).
    threads: Annotated[int, Field(ge=0, le=512)]


class PreprocessParams(_Section):
    clahe: bool
    clip_limit: Annotated[float, Field(gt=0.0, le=40.0)]
    tile_grid: Annotated[int, Field(ge=1, le=64)]
    image_size: Annotated[int, Field(ge=16, le=1024)]
    # px at which CLAHE runs: 0 = the source resolution; N = after an area downscale to N (>= image_size)
    clahe_size: Annotated[int, Field(ge=0, le=4096)]
    workers: Annotated[int, Field(ge=0, le=256)]  # processes, each streaming one archive at a time; 0 or 1 = none
    # An image that is missing, empty, truncated or cannot be decoded. error: stop, naming every one; skip: leave
    # them out (listed in data/processed/bad_images.txt; split leaves them out too).
    on_bad_image: Literal["error", "skip"]
    # Limits on what one archive member may cost, read from its headers before it is read or decoded: its size in
    # the archive (MB), and its width x height. Over either, it is a bad image, named with its archive.
    max_image_mb: Annotated[float, Field(gt=0.0, le=4096.0)]
    max_image_pixels: Annotated[int, Field(ge=1024, le=1_000_000_000)]

    @model_validator(mode="after")
    def _clahe_size_not_below_stored(self) -> PreprocessParams:
        if self.clahe_size and self.clahe_size < self.image_size:
            raise ValueError(f"clahe_size ({self.clahe_size}) must be 0 (the source resolution) or at least "
                             f"image_size ({self.image_size})")
        return self


class SplitParams(_Section):
    method: Literal["official", "random-patient"]
    seed: int  # split seed, separate from the training seeds
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.9)]


class LossParams(_Section):
    name: Literal["focal", "bce", "weighted_bce"]
    # torchvision convention: positives weighted by alpha, negatives by 1 - alpha; -1 turns weighting off.
    # (The study's lineage multiplied the whole loss by alpha=1, which also means "no weighting".)
    alpha: float
    gamma: Annotated[float, Field(ge=0.0, le=10.0)]

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, value: float) -> float:
        if value != -1.0 and not 0.0 < value < 1.0:
            raise ValueError("alpha must be -1 (no class weighting) or strictly between 0 and 1")
        return value


class AugmentParams(_Section):
    crop_scale_min: Annotated[float, Field(gt=0.0, le=1.0)]
    hflip: bool
    brightness: Annotated[float, Field(ge=0.0, lt=1.0)]
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)]


class TrainParams(_Section):
    pretrained: bool
    image_size: Annotated[int, Field(ge=MIN_TRAIN_SIZE, le=1024)]
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    val_batch_size: Annotated[int, Field(ge=1, le=4096)]  # validation after each epoch (it picks the best epoch)
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: Annotated[float, Field(gt=0.0, le=10.0)]
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)]
    schedule: Literal["onecycle", "cosine", "constant"]
    loss: LossParams
    augment: AugmentParams
    channels_last: bool
    num_workers: Annotated[int, Field(ge=0, le=64)]
    device: Literal["auto", "cpu", "cuda"]
    amp: bool
    compile: bool
    # Deterministic algorithms: the same seed on the same machine gives the same numbers (a little slower on GPU).
    deterministic: bool
    # Negative control: train on labels permuted across images; test AUROC must then stay near 0.5.
    shuffle_labels: bool


class EvaluateParams(_Section):
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    # Equal-width probability bins of the expected calibration error (ECE) and of the reliability diagram.
    calibration_bins: Annotated[int, Field(ge=2, le=100)]


class CoverageParams(_Section):
    """`report.coverage`: the simulation that measures the report's intervals (`cxrstudy.reporting.coverage`)."""

    reps: Annotated[int, Field(ge=10, le=100000)]
    seed: int
    positive_patients: Annotated[list[Annotated[int, Field(ge=1, le=100000)]], Field(min_length=1)]
    auroc: Annotated[list[Annotated[float, Field(gt=0.5, lt=1.0)]], Field(min_length=1)]
    patients: Annotated[int, Field(ge=4, le=100000)]
    images_per_patient: Annotated[float, Field(ge=1.0, le=100.0)]
    patient_correlation: Annotated[float, Field(ge=0.0, lt=1.0)]
    model_correlation: Annotated[float, Field(ge=0.0, lt=1.0)]
    tolerance: Annotated[float, Field(gt=0.0, lt=0.5)]


class ReportParams(_Section):
    bootstrap: Annotated[int, Field(ge=0, le=100000)]
    bootstrap_seed: int
    # Confidence level of every interval; 1 - level is also the family-wise error rate of each Holm-corrected family.
    level: Annotated[float, Field(gt=0.5, lt=1.0)]
    # Findings with fewer positive test patients get no interval, no rank and no claim (chosen with `coverage`).
    min_positives: Annotated[int, Field(ge=1, le=100000)]
    clahe_samples: Annotated[int, Field(ge=1, le=12)]
    # Age bands of the subgroup analysis: the cut points in years, rising ([40, 60]: < 40, 40-59, >= 60).
    age_bands: Annotated[list[Annotated[int, Field(ge=1, le=150)]], Field(min_length=1, max_length=10)]
    coverage: CoverageParams

    @field_validator("age_bands")
    @classmethod
    def _rising(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"age_bands must rise strictly (cut points in years, e.g. [40, 60]); got {value}")
        return value


class LocalizeParams(_Section):
    """`localize`: Grad-CAM heatmaps scored against the test set's boxes (`cxrstudy.learning.localize`)."""

    # DenseNet-121 feature block whose output Grad-CAM weighs; at 64 px its maps are 16, 8, 4 and 2 cells a side.
    layer: Literal["denseblock1", "denseblock2", "denseblock3", "denseblock4"]
    # Heatmap -> boxes (Wang et al. 2017): the map scaled to [0, 1], thresholded at each level, one box per
    # connected region. Wang's levels are 60 and 180 of 255.
    box_levels: Annotated[list[Annotated[float, Field(gt=0.0, lt=1.0)]], Field(min_length=1, max_length=8)]
    # A box counts as localised at T when a predicted box has IoBB >= T (overlap / predicted box's area).
    iobb_thresholds: Annotated[list[Annotated[float, Field(gt=0.0, le=1.0)]], Field(min_length=1, max_length=20)]
    figure_images: Annotated[int, Field(ge=0, le=12)]  # test images per finding kept for the overlay figure
    batch_size: Annotated[int, Field(ge=1, le=4096)]  # (image, finding) pairs per Grad-CAM pass


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_JOB = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class MonitorParams(_Section):
    """`monitor`: where training exports its progress (`cxrstudy.learning.monitoring`).

    ``port``: the HTTP endpoint serving ``/metrics``; ``null`` serves none, ``0`` picks a free port. ``bind``: the
    address it listens on, loopback unless you widen it. ``pushgateway``: ``host:port`` or ``http(s)://host:port``
    of a Pushgateway, pushed to at each epoch's end and at close; ``null`` pushes nothing. ``job``: the Pushgateway
    ``job`` label (the grouping key adds ``seed``). ``push_timeout_s``: how long one push may take in all.
    """

    port: Annotated[int, Field(ge=0, le=65535)] | None
    bind: str
    pushgateway: str | None
    job: str
    push_timeout_s: Annotated[float, Field(gt=0.0, le=120.0)]

    @field_validator("bind")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        value = value.strip()
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value):
                raise ValueError(
                    "bind must be an IP address or host name to listen on, e.g. 127.0.0.1 (loopback only), "
                    "0.0.0.0 (all IPv4 interfaces) or :: (all interfaces)"
                ) from None
        return value

    @field_validator("pushgateway")
    @classmethod
    def _gateway_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        hint = "pushgateway must be host:port or http(s)://host:port, e.g. 127.0.0.1:9091; use null for no pushes"
        if not value:
            raise ValueError(hint)
        url = value if re.match(r"^https?://", value, flags=re.IGNORECASE) else f"http://{value}"
        no_credentials(url, "pushgateway")
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError when the port is not a number in 0..65535
        except ValueError:
            raise ValueError(hint) from None
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(hint)
        return url.rstrip("/")

    @field_validator("job")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if not _JOB.match(value):
            raise ValueError("job must be 1-128 characters from letters, digits and _ . : -")
        return value


class Params(_Section):
    seeds: list[int]
    numerics: NumericsParams
    ingest: IngestParams
    preprocess: PreprocessParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams
    localize: LocalizeParams
    monitor: MonitorParams

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


# Parameters that hold an address: an error message shows only their scheme, host and port (`shown_address`).
ADDRESS_PARAMS = frozenset({"monitor.pushgateway", "ingest.nih.base_url", "ingest.nih.metadata_url"})


def _redact(value: Any, where: str = "") -> Any:
    """What an error message may echo of a value given at `where`: an address (a value of `ADDRESS_PARAMS`, or one
    that looks like a URL or holds user:password@) only as `shown_address`, a value other than a number, a string or
    null only by its type: user:password@, or a token in a path or a query, would otherwise end up in logs."""
    if isinstance(value, str):
        looks_like_address = "@" in value or "://" in value or "?" in value
        return shown_address(value) if where in ADDRESS_PARAMS or looks_like_address else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return f"<a {type(value).__name__}, not shown>"


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
        elif item["type"] == "missing":
            lines.append(f"  {where}: missing; params.yaml sets every parameter (profiles change only some)")
        else:
            got = _redact(item.get("input"), where)
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
    return parse_params(read_yaml(path), path)
