"""Markdown cells: a `Table` holds values, not text, and `cell` formats each one (4 decimals, mean ± sd, min–max,
intervals, signed differences, counts), so the templates only lay tables out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxrstudy.reporting.inference import Estimate, Tested


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float


@dataclass(frozen=True)
class Span:
    low: float
    high: float


@dataclass(frozen=True)
class WithCI:
    """A value and its interval in one cell: `0.8512 [0.8201, 0.8790]`."""

    estimate: Estimate


@dataclass(frozen=True)
class Diff:
    """A paired difference in one cell: `+0.0123 [-0.0100, +0.0300]`, with a marker when beyond noise."""

    tested: Tested
    note: str = ""


@dataclass(frozen=True)
class Below:
    """A count under the threshold: `5 (< 8)`."""

    count: int
    threshold: int


def _zero(value: float, digits: int) -> float:
    """A value that rounds to zero prints as 0, never as -0."""
    return 0.0 if round(value, digits) == 0 else value


def fmt(value: float | None, digits: int = 4) -> str:
    """Fixed decimals; an undefined value (no positive in the test set) prints as n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{_zero(value, digits):.{digits}f}"


def signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{_zero(value, 4):+.4f}"


def interval(e: Estimate, sign: bool = False) -> str:
    """`[low, high]`, `(exact)` after a bound for AUROC 1; n/a without an interval."""
    if math.isnan(e.low):
        return "n/a"
    show = signed if sign else fmt
    return f"[{show(e.low)}, {show(e.high)}]" + (" (exact)" if e.method == "exact" else "")


def cell(value: Any) -> str:
    """One Markdown table cell; no pipe or line break can break the row."""
    if value is None:
        return "—"
    if isinstance(value, MeanSd):
        return fmt(value.mean) if math.isnan(value.sd) else f"{fmt(value.mean)} ± {fmt(value.sd)}"
    if isinstance(value, Span):
        return "n/a" if math.isnan(value.low) else f"{fmt(value.low)}–{fmt(value.high)}"
    if isinstance(value, Estimate):
        return interval(value)
    if isinstance(value, WithCI):
        e = value.estimate
        return fmt(e.value) if math.isnan(e.low) else f"{fmt(e.value)} {interval(e)}"
    if isinstance(value, Diff):
        d = value.tested.difference
        mark = " ✱" if value.tested.beyond_noise else ""
        shown = interval(d, sign=True)
        return f"{signed(d.value)}{'' if shown == 'n/a' else ' ' + shown}{mark}{value.note}"
    if isinstance(value, Below):
        return f"{value.count} (< {value.threshold})"
    if isinstance(value, float):
        return fmt(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def pvalue(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


@dataclass(frozen=True)
class Table:
    """A Markdown table: a header, an alignment per column (`l`, `r`, `c`), rows of cells."""

    header: list[str]
    align: list[str]
    rows: list[list[Any]]

    def __post_init__(self) -> None:
        if len(self.align) != len(self.header) or any(len(r) != len(self.header) for r in self.rows):
            raise ValueError(f"table rows must have {len(self.header)} cells, like the header {self.header}")


def rule(align: str) -> str:
    return {"l": ":---", "r": "---:", "c": ":---:"}[align]


def f1_label(protocol: str) -> str:
    """A short name for a threshold protocol, for column headers."""
    return "validation thresholds" if "validation" in protocol else protocol


def percent(value: float | None) -> str:
    """A measured share (a coverage) to a tenth of a percent; n/a when unknown."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def span(values: list[float | None]) -> str:
    """`88 %` or `84–94 %` over the known values."""
    known = sorted(v for v in values if v is not None and not math.isnan(v))
    if not known:
        return "n/a"
    low, high = percent(known[0]), percent(known[-1])
    return low if low == high else f"{low[:-1]}–{high}"
