"""Label spaces and how they align: which finding of one dataset is which finding of another's.

Every dataset carries its own label names (`dataset.json`); a model is trained on one dataset's and carries them in
its file. To test a model on another dataset, the findings the two label spaces share are paired through
`resources/label_map.csv`, written once as data: one row per shared finding, one column per label space (`nih`,
`chexpert`), NIH ChestX-ray14's `Effusion` being CheXpert's `Pleural Effusion`, for instance. Two datasets of the same
label space share every finding both list.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cxrstudy.errors import InputError

LABEL_MAP_FILE = "label_map.csv"

# NIH ChestX-ray14's findings, alphabetical as in the seed study's tables. Only the reporting side still reads this
# constant, until it takes the names from the predictions it reads; everything else takes them from the data.
FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)


@dataclass(frozen=True)
class SharedFinding:
    """One finding two label spaces share: its name in the model's space (`finding`) and in the other's (`other`)."""

    finding: str
    other: str


@cache
def label_map() -> tuple[dict[str, str], ...]:
    """The rows of `resources/label_map.csv`: label space -> that space's name of one shared finding."""
    text = (resources.files("cxrstudy") / "resources" / LABEL_MAP_FILE).read_text()
    return tuple(dict(row) for row in csv.DictReader(text.splitlines()))


def label_spaces() -> tuple[str, ...]:
    """The label spaces the map knows (its columns after `finding`)."""
    return tuple(k for k in label_map()[0] if k != "finding")


def shared_findings(space: str, labels: Sequence[str], other_space: str,
                    other_labels: Sequence[str]) -> list[SharedFinding]:
    """The findings of `labels` (in label space `space`) that `other_labels` (in `other_space`) also has, in the order
    of `labels`. Within one label space a finding is shared when both list its name; across spaces, when a row of the
    label map names it in both and both datasets list it."""
    if space == other_space:
        present = set(other_labels)
        return [SharedFinding(name, name) for name in labels if name in present]
    known = label_spaces()
    for s in (space, other_space):
        if s not in known:
            raise InputError(f"label space {s!r} is not in resources/{LABEL_MAP_FILE}; known: {', '.join(known)}")
    pairs = {row[space]: row[other_space] for row in label_map() if row[space] and row[other_space]}
    present = set(other_labels)
    return [SharedFinding(name, pairs[name]) for name in labels if name in pairs and pairs[name] in present]
