"""What a number is about, as identities rather than text: a `Model` (a seed, the ensemble, the mean of the seeds, an
experiment arm) and a `Contrast` (what is compared with what, and why). Statistics are grouped, looked up and
ordered by these; `label` and `contrast_label` are the only places where they become words, so renaming a row
cannot regroup a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

# Model kinds
SEED = "seed"
ENSEMBLE = "ensemble"
MEAN = "mean of seeds"
ARM = "arm"

# Contrast kinds: each is one question, and one Holm family per question and table
SEED_PAIR = "seed pair"  # seed a - seed b
ENSEMBLE_VS_MEAN = "ensemble vs mean"  # the ensemble - the mean of the seeds
ENSEMBLE_VS_BEST = "ensemble vs best"  # the ensemble - the seed with the highest value on this test set
HEAD_VS_BASE = "head vs base"  # the same model at two revisions
LOSS = "loss"  # an arm - the arm with the baseline's loss and the same CLAHE setting
CLAHE = "clahe"  # CLAHE on - off, same loss
OTHER = "other"  # an arm that differs from the baseline in more than the loss or CLAHE - the baseline
SITE_DROP = "site drop"  # one model at the training site - the same model at the external site (independent sets)
CLAHE_DROP = "clahe drop"  # the drop between sites of an arm with CLAHE on - of the same loss with it off
SUBGROUP = "subgroup"  # one model on one subgroup - the same model on another (e.g. AP - PA), same test patients
LABEL_SET = "label set"  # one model scored against the experts' labels - against the dataset's own, same images


@dataclass(frozen=True, order=True)
class Model:
    """A scored model. `seed` for a seed; `count` seeds behind a mean or an ensemble (0: not said); `arm` names an
    experiment arm or a revision ("head", "base")."""

    kind: str
    seed: int = -1
    count: int = 0
    arm: str = ""


def seed(number: int, arm: str = "") -> Model:
    return Model(SEED, number, arm=arm)


def ensemble(count: int = 0, arm: str = "") -> Model:
    return Model(ENSEMBLE, count=count, arm=arm)


def mean(count: int = 0, arm: str = "") -> Model:
    return Model(MEAN, count=count, arm=arm)


def arm(name: str) -> Model:
    return Model(ARM, arm=name)


def scored_on(model: Model, where: str) -> Model:
    """`model` scored on one group or site (`where`, e.g. "AP", "external site"): the same model, told apart from
    itself on another group by `arm`, so that a within-model contrast has two distinct sides."""
    return Model(model.kind, model.seed, model.count, where)


@dataclass(frozen=True, order=True)
class Contrast:
    """`first` - `second`, asked for the reason `kind` names."""

    kind: str
    first: Model
    second: Model

    def reversed(self) -> Contrast:
        return Contrast(self.kind, self.second, self.first)

    def involves(self, model: Model) -> bool:
        return model in (self.first, self.second)


def label(model: Model) -> str:
    """A model's name in every table and sentence."""
    if model.kind == SEED:
        text = f"seed {model.seed}"
    elif model.kind == ENSEMBLE:
        text = "ensemble"
    elif model.kind == MEAN:
        text = f"mean of {model.count} seeds" if model.count else "mean of seeds"
    else:
        return model.arm
    return f"{model.arm} {text}" if model.arm and model.kind != ARM else text


def contrast_label(c: Contrast) -> str:
    """A contrast's row or column name: "seed 12 − seed 22", "ensemble − best seed (32)", or for head − base the
    model's own name."""
    if c.kind == HEAD_VS_BASE:
        return label(Model(c.first.kind, c.first.seed, c.first.count))
    if c.kind == ENSEMBLE_VS_BEST:
        return f"ensemble − best seed ({c.second.seed})"
    if c.kind in (SITE_DROP, SUBGROUP, LABEL_SET):  # the same model twice: the groups it is scored on say it
        return f"{label(Model(c.first.kind, c.first.seed, c.first.count))}: {c.first.arm} − {c.second.arm}"
    return f"{label(c.first)} − {label(c.second)}"


def column_label(c: Contrast) -> str:
    """The per-finding table's column for a contrast: the best seed differs between findings, so its column is
    "ensemble − best seed" and the cell names the seed."""
    return "ensemble − best seed" if c.kind == ENSEMBLE_VS_BEST else contrast_label(c)
