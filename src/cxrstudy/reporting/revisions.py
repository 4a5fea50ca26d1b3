"""Files as committed at a git revision (the predictions of a base revision or of an experiment's commit).

A revision is resolved to a commit first (`git rev-parse --verify --end-of-options REV^{commit}`), so an unknown
revision says so, and a revision can never reach git as an option (`--base=-n`): git is only ever given the full
commit id it resolved to.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cxrstudy.errors import InputError
from cxrstudy.reporting.results import Predictions, parse_predictions


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InputError("git not found on PATH: it is needed to read files at a revision") from None


def resolve(repo: Path, rev: str) -> str:
    """The full commit id of `rev` in `repo`; an error naming it when it is not a revision there."""
    if not rev or rev.startswith("-") or any(c in rev for c in "\0\n\r"):
        raise InputError(f"{rev!r}: not a revision (a branch, tag or commit; it may not start with '-')")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise InputError(f"{repo}: not a git repository, so revision {rev} cannot be read there")
    done = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise InputError(f"{rev}: unknown revision in {repo} (no branch, tag or commit of that name; "
                         "fetch it first, e.g. `git fetch origin main`)")
    return done.stdout.strip()


def show(repo: Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit` (a full id from `resolve`); None when that commit has no such file."""
    done = _git(repo, "show", f"{commit}:{path}")
    return done.stdout if done.returncode == 0 else None


def predictions_at(repo: Path, rev: str, path: str, commit: str | None = None) -> Predictions:
    """`path` (e.g. predictions/seed_12.csv) as committed at `rev`; an error naming both when the revision has no
    such file. `commit`: `rev` already resolved."""
    commit = commit or resolve(repo, rev)
    text = show(repo, commit, path)
    if text is None:
        raise InputError(f"{rev}:{path}: no such file at that revision (predictions are committed from the evaluate "
                         "stage's cache: false outputs; re-run the pipeline there, or give a predictions folder)")
    return parse_predictions(text, f"{rev}:{path}")
