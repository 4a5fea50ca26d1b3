#!/usr/bin/env python3
"""Build the markdown body of the CI metrics comment.

The body holds ``dvc metrics diff --md BASE`` (BASE against the workspace) and
the rendered report, under a hidden marker line that lets
``upsert_comment.sh`` find and update the same comment on later
pushes. Used by .github/workflows/ci.yml (sample pipeline) and
gpu-study.yml (real study); tested in tests/test_workflows.py.

Run it with the interpreter that has DVC installed (the project venv, or the
image's). It never fails because the diff failed: the failure is reported in
the body (and as a workflow warning) so that the comment still updates.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# GitHub rejects comment bodies above 65536 characters.
MAX_BODY = 65_000


def marker_line(marker: str) -> str:
    return f"<!-- cxrstudy-ci:{marker} -->"


def dvc_command() -> list[str]:
    """DVC from this interpreter if it has it, else the `dvc` on PATH."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    exe = shutil.which("dvc")
    if exe is None:
        raise SystemExit("error: DVC is neither importable nor on PATH")
    return [exe]


def metrics_diff(base: str, repo_dir: Path) -> tuple[bool, str]:
    """Return (ok, text): the markdown table, or the error output."""
    proc = subprocess.run(
        [*dvc_command(), "metrics", "diff", "--md", base],
        cwd=repo_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        return False, err[-4000:]
    return True, proc.stdout.strip()


SEED_METRICS = "metrics/eval"


def paired_changes(base: str, repo_dir: Path) -> list[str]:
    """`cxrstudy compare`: head − base mean AUROC per seed and for the ensemble, with paired patient-bootstrap
    intervals on the same test patients; its error, as a text block, when it cannot say (no predictions at base)."""
    proc = subprocess.run([sys.executable, "-m", "cxrstudy", "compare", "--base", base], cwd=repo_dir,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()[-2000:]
        return ["### Is the change real?", "", "`cxrstudy compare` could not say:", "", "```text", err, "```", ""]
    return [proc.stdout.strip(), ""]


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def environments(base: str, repo_dir: Path) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """The environment block of the first seed's metrics file at `base` (from git) and in the workspace."""
    head_files = sorted((repo_dir / SEED_METRICS).glob("seed_*.json"))
    if not head_files:
        return None, None
    head_env = json.loads(head_files[0].read_text()).get("environment") or None
    rel = head_files[0].relative_to(repo_dir).as_posix()
    shown = subprocess.run(["git", "show", f"{base}:{rel}"], cwd=repo_dir, capture_output=True, text=True,
                           check=False)
    base_env = None
    if shown.returncode == 0:
        try:
            base_env = json.loads(shown.stdout).get("environment") or None
        except json.JSONDecodeError:
            base_env = None
    return base_env, head_env


def environment_section(base_env: dict[str, object] | None, head_env: dict[str, object] | None,
                        base: str) -> list[str]:
    """Both environments side by side, and whether they differ in anything that can change the numbers (all but
    the code's commit)."""
    if head_env is None:
        return []
    lines = ["### Environment", "", f"| field | base `{base}` | head |", "|---|---|---|"]
    flat_base, flat_head = _flat(base_env or {}), _flat(head_env)
    for key in sorted(set(flat_base) | set(flat_head)):
        b, h = flat_base.get(key, "—"), flat_head.get(key, "—")
        mark = " ⚠" if b != h and not key.startswith("code.") else ""
        lines.append(f"| `{key}`{mark} | {b} | {h} |")
    lines.append("")
    if base_env is None:
        lines.append(f"_`{base}` records no environment: metric changes may come from its environment as well._")
    else:
        differ = [k for k in sorted(set(flat_base) | set(flat_head))
                  if not k.startswith("code.") and flat_base.get(k) != flat_head.get(k)]
        if differ:
            lines.append("**The environments differ in what can change the numbers ("
                         + ", ".join(f"`{k}`" for k in differ) + "): metric changes may come from that, not "
                         "from this pull request.**")
        else:
            lines.append("Same environment in everything that can change the numbers: metric changes come from "
                         "the changes themselves.")
    return [*lines, ""]


def _seeds_first(table: str) -> str:
    """The diff table with each seed's evaluation rows first, then the report's headline numbers, then the rest
    (external, localisation, subgroups): when GitHub's size limit truncates the body, what is cut is the detail."""
    lines = table.splitlines()
    if len(lines) < 3 or not lines[0].startswith("|"):
        return table

    def rank(row: str) -> tuple[int, bool]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        path = cells[0] if cells else ""
        gone = len(cells) > 3 and cells[3] == "-"  # a metric only the base has (e.g. a seed no longer run)
        return (0 if path.startswith("metrics/eval/") else 1 if path == "metrics/report.json" else 2), gone

    return "\n".join(lines[:2] + sorted(lines[2:], key=rank))


def build_body(
    *,
    marker: str,
    title: str,
    base: str,
    diff_ok: bool,
    diff_text: str,
    report: Path,
    report_label: str,
    run_url: str | None,
    head: str | None,
    environment: list[str] | None = None,
    changes: list[str] | None = None,
) -> str:
    parts = [marker_line(marker), f"## {title}", ""]
    meta = [f"metrics diff against `{base}`"]
    if head:
        meta.append(f"head `{head[:12]}`")
    if run_url:
        meta.append(f"[workflow run]({run_url})")
    parts += [" · ".join(meta), "", "### `dvc metrics diff --md`", ""]
    if not diff_ok:
        parts += ["`dvc metrics diff` failed:", "", "```text", diff_text, "```"]
    elif diff_text:
        parts.append(_seeds_first(diff_text))
    else:
        parts.append(f"No metric changed against `{base}`.")
    parts.append("")
    parts += changes or []
    parts += environment or []
    if report.is_file():
        text = report.read_text(encoding="utf-8").strip()
        parts += [
            "<details open>",
            f"<summary>Rendered report (<code>{report_label}</code>)</summary>",
            "",
            text,
            "",
            "</details>",
        ]
    else:
        parts.append(f"_No report at `{report_label}`._")
    body = "\n".join(parts) + "\n"
    if len(body) > MAX_BODY:
        note = "\n\n_…truncated: the full report is in the workflow run's artifacts._\n"
        body = body[: MAX_BODY - len(note)] + note
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to diff the workspace metrics against")
    ap.add_argument("--marker", required=True, help="comment identity, e.g. 'sample' or 'study'")
    ap.add_argument("--title", default="cxrstudy metrics")
    ap.add_argument("--report", default="reports/report.md", help="report path, relative to --repo-dir")
    ap.add_argument("--repo-dir", default=".")
    ap.add_argument("--run-url", default=None)
    ap.add_argument("--head", default=None, help="commit the metrics come from")
    ap.add_argument("--out", required=True, help="where to write the body")
    args = ap.parse_args(argv)

    repo_dir = Path(args.repo_dir)
    ok, text = metrics_diff(args.base, repo_dir)
    if not ok:
        first = text.splitlines()[-1] if text else "no output"
        print(f"::warning title=dvc metrics diff failed::{first}", file=sys.stderr)
    report = Path(args.report)
    body = build_body(
        marker=args.marker,
        title=args.title,
        base=args.base,
        diff_ok=ok,
        diff_text=text,
        report=report if report.is_absolute() else repo_dir / report,
        report_label=args.report,
        run_url=args.run_url or None,
        head=args.head or None,
        environment=environment_section(*environments(args.base, repo_dir), args.base),
        changes=paired_changes(args.base, repo_dir) if (repo_dir / "dvc.yaml").is_file() else None,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(body)
    print(f"wrote {out} ({len(body)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
