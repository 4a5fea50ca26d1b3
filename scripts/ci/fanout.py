#!/usr/bin/env python3
"""The seed study (or the arm × seed grid) fanned out over machines and joined through DVC's run cache.

One job per (arm, seed) trains and evaluates that seed and pushes the stages' run-cache entries with every object
they name to the DVC remote; a join restores every seed's stages from there (`dvc repro --pull`) without running
them, proves it from DVC's own log lines, and runs what is left (the report). `gpu-study.yml` calls the
sub-commands step by step; `local` runs the same plan on one machine, one GPU per DVC queue worker. docs/scaling.md
explains the design and quotes what of DVC (the version in requirements.lock) it relies on.

    plan       expand the profile (+ grid) into arms and seeds: the jobs' matrix, and a plan file
    data       per arm: the stages upstream of the per-seed stages (ingest, preprocess, split), pushed; their lock
    run        one (arm, seed): `dvc repro --pull -s` of its per-seed stages, pushed; a receipt of the runs
    save-checkpoint   after a failed run: the training checkpoint to the remote, under the train stage's run key
    check      the join's first step: every (arm, seed) of the plan has a receipt, or name the missing ones
    join       one arm: restore everything, prove nothing per-seed ran, lock entries equal the receipts
    local      all of it on one machine: the data, one queued DVC experiment per (arm, seed), one GPU per worker,
               then the join of every arm

Run it from the project root with the interpreter that has DVC and the project (the image's, or the venv's).
Exit status: 0 done, 1 a failed step or a missing/unrestorable seed (named), 2 bad input (named).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")
# The per-seed stages are the `foreach: ${seeds}` stages of dvc.yaml. Those that train resume from a folder: it
# travels through the remote under the stage's run-cache key (the identity of the run), so a re-run elsewhere of the
# same run resumes from it, and no other run can pick it up.
RESUME_FOLDERS = {"train": "checkpoints/seed_{seed}"}
CHECKPOINT_FILE = "last.pt"
REMOTE_CHECKPOINTS = "checkpoints"
# What DVC 3.x logs (dvc/stage/cache.py, dvc/stage/run.py): the join's proof reads these lines.
RESTORED = "Stage '{}' is cached - skipping run, checking out outputs"
RAN = "Running stage '{}'"


class Failed(Exception):
    """A step that cannot go on: its message names what and why (exit 1)."""


class BadInput(Failed):
    """A plan that cannot be made from the inputs (exit 2)."""


# --------------------------------------------------------------------------------------------------------------------
# Commands


def say(text: str) -> None:
    print(text, flush=True)


def dvc(*args: str, log: Path | None = None, env: dict[str, str] | None = None, check: bool = True,
        quiet: bool = False) -> str:
    """`dvc ARGS` with this interpreter; its output shown as it comes (standard output only, and not shown, with
    `quiet`), returned, and appended to `log`."""
    command = [sys.executable, "-m", "dvc", *args]
    say("+ dvc " + " ".join(shlex.quote(a) for a in args))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None if quiet else subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if not quiet:
            sys.stdout.write(line)
        lines.append(line)
    sys.stdout.flush()
    code = proc.wait()
    text = "".join(lines)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(text)
    if check and code != 0:
        raise Failed(f"dvc {' '.join(args[:3])} ... exited {code}")
    return text


def git(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise Failed(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def repo_locked() -> Iterator[Any]:
    """The DVC repository of the working directory, locked as a DVC command locks it."""
    from dvc.repo import Repo, lock_repo

    with Repo() as repo, lock_repo(repo):
        yield repo


# --------------------------------------------------------------------------------------------------------------------
# The plan: arms (the profile, the grid's combinations) and their seeds


def split_words(text: str | None) -> list[str]:
    return shlex.split(text or "")


def profile_overrides(profile: str) -> list[str]:
    """The `--set-param` overrides of a profile (`python -m cxrstudy profile`), against the committed params.yaml."""
    if not profile:
        return []
    path = Path(profile)
    if path.is_absolute() or ".." in path.parts or not path.is_file():
        raise BadInput(f"--profile {profile}: not a file of this repository (e.g. configs/nih-study.yaml)")
    from cxrstudy.errors import InputError
    from cxrstudy.profile import overrides

    try:
        return overrides(path, PARAMS)
    except InputError as err:
        raise BadInput(str(err)) from None


def sweep(grid: list[str]) -> list[list[str]]:
    """The combinations of a Hydra sweep (`key=a,b`), expanded by DVC's own function (`dvc exp run --queue -S`)."""
    if not grid:
        return [[]]
    from dvc.utils.hydra import get_hydra_sweeps

    return [list(combo[str(PARAMS)]) for combo in get_hydra_sweeps({str(PARAMS): grid})]


def apply_to(path: Path, overrides: list[str]) -> None:
    """Set `overrides` in a params file exactly as `dvc exp run --set-param` does (DVC's Hydra composition)."""
    if not overrides:
        return
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    try:
        apply_overrides(path, overrides)
    except InvalidArgumentError as err:
        raise BadInput(f"{' '.join(overrides)}: {err} ({err.__cause__})") from None
    # DVC writes YAML 1.2 (`lr: 5e-05`), which PyYAML, the stages' reader (YAML 1.1), takes for a string: rewritten
    # with PyYAML (`5.0e-05`), both read the same values, and DVC records the same parameters in dvc.lock.
    path.write_text(yaml.safe_dump(load_yaml(path), sort_keys=False))


def seeds_with(overrides: list[str]) -> list[int]:
    """The seeds of params.yaml with `overrides` applied, validated by the project's schema."""
    from cxrstudy.errors import InputError
    from cxrstudy.params import parse_params, read_yaml

    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / PARAMS.name
        shutil.copyfile(PARAMS, params)
        apply_to(params, overrides)
        try:
            return list(parse_params(read_yaml(params), params).seeds)
        except InputError as err:
            raise BadInput(f"{' '.join(overrides)}: {err}") from None


def per_seed_stage_names() -> list[str]:
    """The `foreach: ${seeds}` stages of dvc.yaml, in file order (e.g. train, evaluate)."""
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    return [name for name, body in stages.items() if isinstance(body, dict) and body.get("foreach") == "${seeds}"]


def seed_stages(seed: int) -> list[str]:
    return [f"{name}@{seed}" for name in per_seed_stage_names()]


def build_plan(profile: str, grid: list[str], sets: list[str]) -> dict[str, Any]:
    base = profile_overrides(profile) + sets
    combos = sweep(grid)
    arms = []
    for index, combo in enumerate(combos, 1):
        seeds = seeds_with(base + combo)
        arms.append({"arm": "study" if not grid else f"a{index}", "sets": combo, "seeds": seeds})
    return {"profile": profile, "sets": sets, "arms": arms}


def arm_of(plan: dict[str, Any], arm: str) -> dict[str, Any]:
    for entry in plan["arms"]:
        if entry["arm"] == arm:
            return dict(entry)
    raise BadInput(f"--arm {arm}: not in the plan (arms: {', '.join(a['arm'] for a in plan['arms'])})")


def arm_overrides(plan: dict[str, Any], arm: str) -> list[str]:
    return profile_overrides(plan["profile"]) + list(plan["sets"]) + list(arm_of(plan, arm)["sets"])


def load_plan(args: argparse.Namespace) -> dict[str, Any]:
    text = args.plan_json if args.plan_json else Path(args.plan).read_text()
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"the plan is not JSON: {err}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("arms"), list):
        raise BadInput("the plan has no arms (make it with `fanout.py plan`)")
    return plan


def reset_workspace() -> None:
    """params.yaml and dvc.lock as committed: every arm starts where a fresh checkout starts."""
    tracked = [p for p in (PARAMS, DVC_LOCK) if git("ls-files", "--", str(p)).strip()]
    git("checkout", "HEAD", "--", *map(str, tracked))
    if DVC_LOCK not in tracked:
        DVC_LOCK.unlink(missing_ok=True)


def apply_arm(plan: dict[str, Any], arm: str) -> list[str]:
    reset_workspace()
    overrides = arm_overrides(plan, arm)
    apply_to(PARAMS, overrides)
    say(f"arm {arm}: params.yaml with {' '.join(overrides) if overrides else 'no change'}")
    return overrides


def data_stage_names() -> list[str]:
    """The stages that the per-seed stages depend on, directly or not, and that are not per-seed themselves, in
    dvc.yaml's order."""
    import networkx as nx

    with repo_locked() as repo:
        graph = repo.index.graph
        per_seed = {s for s in graph if s.addressing.split("@")[0] in per_seed_stage_names() and "@" in s.addressing}
        upstream: set[Any] = set()
        for stage in per_seed:
            upstream |= nx.descendants(graph, stage)
        # In dvc.yaml's order: DVC writes a new dvc.lock's entries in the order it runs them, and a join must write
        # the same bytes as one machine's `dvc repro`.
        order = [s.addressing for s in repo.index.stages]
        return sorted((s.addressing for s in upstream - per_seed), key=order.index)


# --------------------------------------------------------------------------------------------------------------------
# The run cache: push a stage's entry with every object it names; compute a stage's key


def repro_data_stages(*options: str) -> None:
    """The shared data stages, each as its own target in dvc.yaml's order: DVC writes a new dvc.lock's entries in the
    order it runs them, so one machine's `dvc repro` and a join then write the same bytes."""
    for name in data_stage_names():
        dvc("repro", *options, name)


def _stage(repo: Any, name: str) -> Any:
    stages = repo.stage.collect(name)
    if len(stages) != 1:
        raise Failed(f"{name}: not one stage of dvc.yaml")
    return stages[0]


def _can_hash(stage: Any) -> bool:
    from dvc.stage.cache import _can_hash as can_hash

    return bool(can_hash(stage))


def run_key(stage: Any) -> str:
    """The run-cache key DVC computes for `stage` (command, dependencies' hashes, parameters, output paths)."""
    from dvc.stage.cache import _get_stage_hash

    return str(_get_stage_hash(stage))


def push_stages(names: Sequence[str]) -> dict[str, Any]:
    """Push what another machine needs to restore these stages with `dvc repro --pull`: each stage's run-cache entry
    and every object it names, the `cache: false` metrics and plots included (`dvc push --run-cache` of DVC >= 3.28
    sends the entries only). Stages DVC cannot key (`always_changed`, `persist`) push their outputs. Returns the
    receipt."""
    from dvc.stage.cache import _get_cache_hash
    from dvc.stage.serialize import to_single_stage_lockfile

    receipt: dict[str, Any] = {}
    with repo_locked() as repo:
        cache = repo.stage_cache
        entries: list[tuple[str, str]] = []
        used: dict[Any, set[Any]] = {}
        for name in names:
            stage = _stage(repo, name)
            if not _can_hash(stage):
                # always_changed (manifest) and persist (preprocess, which keeps unchanged shards) stages have no run
                # key: their outputs travel as objects, found through the data lock the plan job hands on.
                if not (stage.always_changed or any(o.persist for o in stage.outs)):
                    raise Failed(f"{name}: DVC cannot key this stage's runs (dvc/stage/cache.py _can_hash)")
                for odb, objs in stage.get_used_objs().items():
                    used.setdefault(odb, set()).update(objs)
                continue
            lock = to_single_stage_lockfile(stage)
            key, value = run_key(stage), _get_cache_hash(copy.deepcopy(lock))
            if cache._load_cache(key, value) is None:
                plain = [str(o) for o in stage.outs if not o.use_cache and not (o.is_metric or o.is_plot)]
                why = (f"DVC saves no run for a stage with a `cache: false` output that is neither a metric nor a plot "
                       f"({', '.join(plain)}; dvc/stage/__init__.py, Stage.run): declare it under `plots:`"
                       if plain else "run `dvc repro` of it first")
                raise Failed(f"{name}: no run-cache entry for its current lock: {why}")
            entries.append((key, value))
            receipt[name] = {"key": key, "value": value, "lock": json.loads(json.dumps(lock))}
        for odb, objs in cache.get_used_objs(entries).items():
            used.setdefault(odb, set()).update(objs)
        pushed = 0
        for odb, objs in used.items():
            if odb is not None:
                continue  # another repository's cache (imports): not ours to push
            result = repo.cloud.push(objs)
            if result.failed:
                raise Failed(f"pushing {len(result.failed)} object(s) failed: {sorted(h.value for h in result.failed)}")
            pushed += len(result.transferred)
        remote = repo.cloud.get_remote_odb(None, "push --run-cache", hash_name="md5-dos2unix")
        for key, value in entries:
            target = remote.fs.join(remote.path, "runs", key[:2], key, value)
            remote.fs.put_file(cache._get_cache_path(key, value), target)
    say(f"pushed {len(entries)} run-cache entr{'y' if len(entries) == 1 else 'ies'} ({', '.join(receipt)}) and "
        f"{pushed} new object(s)")
    return receipt


def _checkpoint_targets(seed: int) -> list[tuple[str, Path]]:
    return [(f"{stage}@{seed}", Path(folder.format(seed=seed)) / CHECKPOINT_FILE)
            for stage, folder in RESUME_FOLDERS.items() if stage in per_seed_stage_names()]


def _remote_checkpoint(repo: Any, key: str) -> tuple[Any, str]:
    remote = repo.cloud.get_remote_odb(None, "checkpoint", hash_name="md5-dos2unix")  # the remote's root
    return remote.fs, remote.fs.join(remote.path, REMOTE_CHECKPOINTS, key[:2], key, CHECKPOINT_FILE)


def _keyed(repo: Any, name: str) -> Any:
    """The stage with its dependencies hashed from the workspace (pulled first where missing), ready to key."""
    stage = _stage(repo, name)
    missing = [d.def_path for d in stage.deps if not d.exists]
    if missing:
        repo.pull(missing)
    stage.save_deps()
    return stage


def fetch_checkpoints(seed: int) -> None:
    """Put the checkpoint a failed run of the same training pushed (same run key) where training resumes from it."""
    with repo_locked() as repo:
        for name, local in _checkpoint_targets(seed):
            stage = _keyed(repo, name)
            if not _can_hash(stage):
                continue
            fs, path = _remote_checkpoint(repo, run_key(stage))
            if local.exists() or not fs.exists(path):
                say(f"{name}: {'a local checkpoint is there' if local.exists() else 'no checkpoint on the remote'}")
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.tmp-fetch")
            fs.get_file(path, str(tmp))
            tmp.replace(local)
            say(f"{name}: checkpoint of this run fetched from the remote -> {local}")


def save_checkpoints(seed: int) -> None:
    with repo_locked() as repo:
        for name, local in _checkpoint_targets(seed):
            if not local.exists():
                say(f"{name}: no checkpoint at {local}")
                continue
            stage = _keyed(repo, name)
            fs, path = _remote_checkpoint(repo, run_key(stage))
            fs.put_file(str(local), path)
            say(f"{name}: checkpoint {local} pushed to the remote ({path})")


# --------------------------------------------------------------------------------------------------------------------
# The jobs


def cmd_plan(args: argparse.Namespace) -> None:
    plan = build_plan(args.profile, split_words(args.grid), split_words(args.set))
    matrix = {"include": [{"arm": a["arm"], "seed": s} for a in plan["arms"] for s in a["seeds"]]}
    for arm in plan["arms"]:
        say(f"arm {arm['arm']}: {' '.join(arm['sets']) or '(the profile as it is)'}; seeds {arm['seeds']}")
    say(f"{len(matrix['include'])} job(s); per-seed stages: {', '.join(per_seed_stage_names())}")
    if args.out:
        Path(args.out).write_text(json.dumps(plan, indent=2) + "\n")
    github_output({"plan": json.dumps(plan, separators=(",", ":")),
                   "matrix": json.dumps(matrix, separators=(",", ":"))}, args.github_output)


def github_output(values: dict[str, str], path: str | None) -> None:
    if not path:
        return
    with open(path, "a") as handle:
        for key, value in values.items():
            handle.write(f"{key}={value}\n")


def cmd_data(args: argparse.Namespace) -> None:
    plan = load_plan(args)
    out = Path(args.locks)
    for arm in plan["arms"]:
        apply_arm(plan, arm["arm"])
        stages = data_stage_names()
        repro_data_stages("--pull")
        if not args.no_push:
            push_stages(stages)
        (out / arm["arm"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DVC_LOCK, out / arm["arm"] / DVC_LOCK.name)
    reset_workspace()


def cmd_run(args: argparse.Namespace) -> None:
    plan = load_plan(args)
    apply_arm(plan, args.arm)
    if args.seed not in arm_of(plan, args.arm)["seeds"]:
        raise BadInput(f"--seed {args.seed}: not a seed of arm {args.arm}")
    lock = Path(args.locks) / args.arm / DVC_LOCK.name
    if not lock.is_file():
        raise Failed(f"{lock}: the data lock of arm {args.arm} is missing (the plan job's `data-locks` artifact)")
    shutil.copyfile(lock, DVC_LOCK)
    stages = seed_stages(args.seed)
    fetch_checkpoints(args.seed)
    dvc("repro", "--pull", "--single-item", *stages, log=Path(args.log) if args.log else None)
    receipt = {"arm": args.arm, "seed": args.seed, "stages": push_stages(stages)}
    Path(args.receipt).parent.mkdir(parents=True, exist_ok=True)
    Path(args.receipt).write_text(json.dumps(receipt, indent=2) + "\n")
    say(f"receipt -> {args.receipt}")


def cmd_save_checkpoint(args: argparse.Namespace) -> None:
    save_checkpoints(args.seed)


def read_receipts(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        receipt = json.loads(path.read_text())
        found[(str(receipt["arm"]), int(receipt["seed"]))] = receipt
    return found


def missing_runs(plan: dict[str, Any], receipts: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    missing = []
    for arm in plan["arms"]:
        for seed in arm["seeds"]:
            have = receipts.get((arm["arm"], seed), {}).get("stages", {})
            lacking = [s for s in seed_stages(seed) if s not in have]
            if lacking:
                label = f"arm {arm['arm']} ({' '.join(arm['sets'])}) " if arm["sets"] else ""
                missing.append(f"{label}seed {seed}: {', '.join(lacking)}")
    return missing


def summary(lines: list[str]) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a") as handle:
            handle.write("\n".join(lines) + "\n")


def cmd_check(args: argparse.Namespace) -> None:
    plan = load_plan(args)
    missing = missing_runs(plan, read_receipts(Path(args.receipts)))
    if missing:
        lines = ["### The study is incomplete: nothing is published", "",
                 "No run of these seeds reached the remote (their job failed or did not run):", "",
                 *[f"- {m}" for m in missing], "",
                 "Re-run the failed jobs (GitHub: *Re-run failed jobs*): the finished seeds are restored, not trained."]
        summary(lines)
        raise Failed("missing runs:\n  " + "\n  ".join(missing))
    say(f"every seed of every arm has pushed its runs ({sum(len(a['seeds']) for a in plan['arms'])} job(s))")


def precheck(receipts: list[dict[str, Any]]) -> None:
    """Before the join's full `dvc repro`: each per-seed stage whose dependencies are all here (the first ones,
    e.g. train) has the run key of its receipt, so DVC will find the pushed run instead of running the stage."""
    stages = {name: entry for r in receipts for name, entry in r["stages"].items()}
    produced = {o["path"] for entry in stages.values() for o in entry["lock"].get("outs", [])}
    checked = []
    with repo_locked() as repo:
        for name, entry in stages.items():
            reads = [d["path"] for d in entry["lock"].get("deps", [])]
            if any(p == o or p.startswith(o.rstrip("/") + "/") for p in reads for o in produced):
                continue  # reads another per-seed stage's outputs: keyed right once that one is restored
            stage = _stage(repo, name)
            if not (all(d.exists for d in stage.deps) and _can_hash(stage)):
                raise Failed(f"{name}: its inputs are not all here after the data stages; nothing was run")
            stage.save_deps()
            key = run_key(stage)
            if key != entry["key"]:
                from dvc.stage.serialize import to_single_stage_lockfile

                here = json.loads(json.dumps(to_single_stage_lockfile(stage)))
                theirs = entry["lock"]
                differ = [d["path"] for d in here.get("deps", [])
                          if d not in theirs.get("deps", [])] + (["params"] if here.get("params") != theirs.get(
                              "params") else []) + (["cmd"] if here.get("cmd") != theirs.get("cmd") else [])
                raise Failed(f"{name}: the join's inputs differ from those of the pushed run ({', '.join(differ)}): "
                             "restoring it would run it instead; nothing was run")
            checked.append(name)
    say(f"the run keys of {', '.join(checked)} match their jobs' runs (the stages after them read their outputs)")


def lock_stages(text: str) -> dict[str, Any]:
    """The stages of a dvc.lock, read as DVC reads it (YAML 1.2: `5e-05` is a number), as JSON values."""
    from dvc.utils.serialize import parse_yaml

    return dict(json.loads(json.dumps(parse_yaml(text, str(DVC_LOCK))["stages"])))


def verify(log: str, receipts: list[dict[str, Any]]) -> None:
    """The proof: DVC's log says every per-seed stage was restored from the run cache and none ran, and each one's
    dvc.lock entry is the one its job pushed."""
    lock = lock_stages(DVC_LOCK.read_text())
    rows, bad = [], []
    for receipt in receipts:
        for name, entry in receipt["stages"].items():
            restored, ran = RESTORED.format(name) in log, RAN.format(name) in log
            same = lock.get(name) == entry["lock"]
            rows.append(f"| `{name}` | {'yes' if restored else 'no'} | {'yes' if ran else 'no'} | "
                        f"{'yes' if same else 'no'} |")
            if ran or not restored or not same:
                bad.append(name)
    ran_here = re.findall(r"^Running stage '([^']+)'", log, flags=re.MULTILINE)
    lines = ["### Joined through DVC's run cache", "",
             "| stage | restored from the run cache | run by the join | lock entry = the job's |",
             "| --- | --- | --- | --- |",
             *rows, "", f"Stages the join ran: {', '.join(f'`{s}`' for s in ran_here) or 'none'}."]
    say("\n".join(lines))
    summary(lines)
    if bad:
        raise Failed(f"not restored as pushed: {', '.join(bad)}")


def join_arm(plan: dict[str, Any], arm: str, receipts: list[dict[str, Any]], log: Path, pull: bool) -> None:
    """One arm: its parameters, the shared data stages, the key check, then the whole pipeline (logged: the proof)."""
    apply_arm(plan, arm)
    pulling = ["--pull"] if pull else []
    repro_data_stages(*pulling)
    precheck([r for r in receipts if r["stages"] and "key" in next(iter(r["stages"].values()))])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    verify(dvc("repro", *pulling, log=log), receipts)


# The git-tracked (cache: false) outputs: a grid's join leaves them as committed once every arm is an experiment.
TRACKED_OUTPUTS = ("metrics", "predictions", "plots", "reports")


def join_all(plan: dict[str, Any], receipts: dict[tuple[str, int], dict[str, Any]], logs: Path, pull: bool) -> None:
    """Every arm of the plan. One arm (the study) stays in the workspace; a grid's arms become DVC experiments
    (`dvc exp save`, named arm-a1 ...) rendered into reports/experiments.md against the first arm."""
    arms = plan["arms"]
    for arm in arms:
        mine = [receipts[(arm["arm"], s)] for s in arm["seeds"]]
        join_arm(plan, arm["arm"], mine, logs / f"join-{arm['arm']}.log", pull)
        if len(arms) > 1:
            untracked = [x for p in git("ls-files", "--others", "--exclude-standard").splitlines()
                         for x in ("--include-untracked", p)]
            dvc("exp", "save", "--force", "--name", f"arm-{arm['arm']}", *untracked)
    if len(arms) > 1:
        reset_workspace()
        tracked = [p for p in TRACKED_OUTPUTS if git("ls-files", "--", p).strip()]
        if tracked:
            git("checkout", "HEAD", "--", *tracked)
        git("clean", "-fdq", "--", *TRACKED_OUTPUTS)
        # The commit the grid ran on holds the committed (sample) results, not one of the grid's arms: its metrics
        # are left out of what `cxrstudy experiments` compares, so that only the arms are paired.
        shown = json.loads(dvc("exp", "show", "--json", quiet=True))
        for entry in shown:
            if entry.get("rev") != "workspace" and isinstance(entry.get("data"), dict):
                entry["data"]["metrics"] = {}
        exp_show = logs / "exp-show.json"
        exp_show.write_text(json.dumps(shown))
        coverage = Path("metrics/coverage.json")  # the interval methods the comparison uses (it reads no data)
        if not coverage.is_file():  # none committed: made beside the logs, the workspace's results left as they are
            coverage = logs / "coverage.json"
            if subprocess.run([sys.executable, "-m", "cxrstudy", "coverage", "--out", str(coverage)],
                              check=False).returncode != 0:
                raise Failed("python -m cxrstudy coverage failed")
        command = [sys.executable, "-m", "cxrstudy", "experiments", "--exp-show", str(exp_show),
                   "--baseline", f"arm-{arms[0]['arm']}", "--coverage", str(coverage),
                   "--out", "reports/experiments.md"]
        say("+ " + " ".join(command))
        if subprocess.run(command, check=False).returncode != 0:
            raise Failed("python -m cxrstudy experiments failed")
        labels = [f"- `arm-{a['arm']}`: {' '.join(a['sets'])}" for a in arms]
        say("the arms, as DVC experiments:\n" + "\n".join(labels))
        summary(["### Arms", "", *labels])


def cmd_join(args: argparse.Namespace) -> None:
    plan = load_plan(args)
    found = read_receipts(Path(args.receipts))
    missing = missing_runs(plan, found)
    if missing:
        raise Failed("missing runs:\n  " + "\n  ".join(missing))
    join_all(plan, found, Path(args.logs), pull=True)


# --------------------------------------------------------------------------------------------------------------------
# One machine: DVC's queue, one worker per GPU


def queue_status() -> tuple[dict[str, str], int]:
    """(task name -> status, workers alive) from `dvc queue status`."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "queue", "status"], capture_output=True, text=True, check=False)
    tasks = {}
    for line in proc.stdout.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[0] != "Task" and cells[-1] in {"Queued", "Running", "Success", "Failed"}:
            tasks[cells[1]] = cells[-1]
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", proc.stdout)
    return tasks, (int(workers.group(1)) + int(workers.group(2))) if workers else 0


def start_workers(gpus: list[str]) -> None:
    """One DVC queue worker per GPU: worker k is spawned as `dvc queue start` spawns it (DVC's own function), with
    CUDA_VISIBLE_DEVICES set to the k-th id in its environment, which it keeps (and hands to every experiment it
    runs). DVC's workers take one experiment at a time and prefetch none (dvc/repo/experiments/queue/celery.py)."""
    from dvc.repo import Repo

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with Repo() as repo:
        queue = repo.experiments.celery_queue
        if queue.worker_status():
            raise Failed("DVC queue workers already run in this repository (`dvc queue status`): stop them first "
                         "(`dvc queue stop`), so that each worker has its own GPU")
        try:
            for k, gpu in enumerate(gpus, 1):
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                queue._spawn_worker(k)
                say(f"queue worker {k}: CUDA_VISIBLE_DEVICES={gpu}")
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before


def exp_lock(name: str) -> dict[str, Any]:
    refs = [line.split() for line in git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").splitlines()]
    revs = [rev for rev, ref in refs if ref.rsplit("/", 1)[-1] == name]
    if not revs:
        raise Failed(f"experiment {name}: no commit (its queue task failed?)")
    return lock_stages(git("show", f"{revs[0]}:{DVC_LOCK}"))


def cmd_local(args: argparse.Namespace) -> None:
    gpus = [g for g in args.gpus.split(",") if g != ""]
    if not gpus:
        raise BadInput("--gpus: one device id per worker, e.g. 0,1,2,3")
    if git("status", "--porcelain", "--", str(PARAMS), str(DVC_LOCK)).strip():
        raise BadInput(f"{PARAMS} or {DVC_LOCK} has uncommitted changes: commit or stash them first (each arm "
                       "starts from the committed files)")
    plan = build_plan(args.profile, split_words(args.grid), split_words(args.set))
    for arm in plan["arms"]:  # the shared stages once per arm, here: every worker restores them from the run cache
        apply_arm(plan, arm["arm"])
        repro_data_stages()
    reset_workspace()
    jobs = {f"fanout-{a['arm']}-s{s}": (a["arm"], s) for a in plan["arms"] for s in a["seeds"]}
    for name, (arm, seed) in jobs.items():
        dvc("exp", "remove", name, check=False)
        apply_arm(plan, arm)  # queued with the workspace's params.yaml (`--set-param` would write YAML 1.2 floats)
        dvc("exp", "run", "--queue", "--name", name, *seed_stages(seed))
    reset_workspace()
    start_workers(gpus)
    while True:
        tasks, _ = queue_status()
        waiting = [n for n in jobs if tasks.get(n) in {"Queued", "Running"}]
        if not waiting:
            break
        time.sleep(args.poll)
    failed = [f"arm {jobs[n][0]} seed {jobs[n][1]} ({n})" for n in jobs if tasks.get(n) != "Success"]
    if failed:
        raise Failed("these runs failed (`dvc queue logs NAME`); run the same command again, the others are "
                     "restored:\n  " + "\n  ".join(failed))
    receipts = {(a, s): {"arm": a, "seed": s, "stages": {st: {"lock": exp_lock(n)[st]} for st in seed_stages(s)}}
                for n, (a, s) in jobs.items()}
    dvc("exp", "remove", *jobs)  # their runs are in the run cache (and their lock entries above): not arms
    join_all(plan, receipts, Path(args.logs), pull=False)


# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def planned(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--plan", help="the plan file of `fanout.py plan --out`")
        group.add_argument("--plan-json", help="the plan as JSON text (the plan job's output)")

    def choices(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", default="", help="a profile of configs/ (only what it changes), e.g. "
                       "configs/nih-study.yaml; empty: params.yaml as committed")
        p.add_argument("--grid", default="", help="Hydra sweep overrides, e.g. "
                       "'train.loss.name=focal,bce preprocess.clahe=true,false' (one arm per combination)")
        p.add_argument("--set", default="", help="overrides applied to every arm, e.g. 'train.epochs=10'")

    p = sub.add_parser("plan", help="the arms, seeds and jobs")
    choices(p)
    p.add_argument("--out", help="write the plan here too")
    p.add_argument("--github-output", default=os.environ.get("GITHUB_OUTPUT"), help="append plan= and matrix= here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="per arm: the shared upstream stages, pushed; their dvc.lock under LOCKS/ARM/")
    planned(p)
    p.add_argument("--locks", required=True)
    p.add_argument("--no-push", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help="one (arm, seed): its per-seed stages, pushed with their run-cache entries")
    planned(p)
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--locks", required=True, help="the data job's locks folder")
    p.add_argument("--receipt", required=True, help="where the receipt (JSON) goes")
    p.add_argument("--log", help="append DVC's output here")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("save-checkpoint", help="after a failed run: its training checkpoint to the remote")
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_save_checkpoint)

    p = sub.add_parser("check", help="every (arm, seed) of the plan has a receipt; else name the missing ones")
    planned(p)
    p.add_argument("--receipts", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("join", help="every arm: restore every stage, prove that none per-seed ran, run the rest")
    planned(p)
    p.add_argument("--receipts", required=True)
    p.add_argument("--logs", required=True, help="folder of DVC's output of each arm's `dvc repro` (the proof)")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("local", help="the whole plan on one machine: DVC's queue, one worker per GPU, then the join")
    choices(p)
    p.add_argument("--gpus", required=True, help="device ids, one worker each: 0,1,2,3")
    p.add_argument("--logs", default="fanout-logs", help="folder of the join's logs")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between looks at the queue")
    p.set_defaults(func=cmd_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Failed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # DVC's own errors (no remote, a transfer that failed, ...): its message, not a trace
        from dvc.exceptions import DvcException

        if not isinstance(err, DvcException):
            raise
        print(f"error: DVC: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
