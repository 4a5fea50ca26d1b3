"""Rendering Markdown with Jinja2: one environment for the report, the experiments comparison and the PR block.

The templates (`templates/*.md.j2`) lay out tables and hold every sentence as a macro (`wording.md.j2`); the filters
here only format numbers, so no result is written in a template and no English is written in Python.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jinja2

from cxrstudy.reporting.cells import cell, fmt, interval, pvalue, rule, signed, span
from cxrstudy.reporting.cells import percent as coverage
from cxrstudy.reporting.localisation import share as rate
from cxrstudy.reporting.naming import contrast_label, label

MAX_CHARS = 65_536  # a GitHub comment's limit: the report is posted on pull requests


def words(items: Sequence[Any]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    names = [str(i) for i in items]
    if not names:
        return ""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def pretty(name: str) -> str:
    return str(name).replace("_", " ")


def percent(level: float | None) -> str:
    """A level as a whole percentage; n/a when unknown."""
    return "n/a" if level is None or math.isnan(level) else f"{level:.0%}"


def share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cxrstudy", "templates"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, signed=signed, cell=cell, rule=rule, interval=interval, pvalue=pvalue, words=words,
                       pretty=pretty, percent=percent, share=share, span=span, coverage=coverage, label=label,
                       clabel=contrast_label, rate=rate)
    return env


def render(template: str, **context: Any) -> str:
    """`template` rendered with `context`; runs of blank lines squeezed to one, one trailing newline."""
    text = environment().get_template(template).render(**context)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
