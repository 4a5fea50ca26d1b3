"""Shared fixtures and helpers: tiny parameters, one tiny dataset built once per test session, workspaces, the
command line and git run in a fresh process, copies of the project, snapshots of outputs, and Markdown tables."""

from __future__ import annotations

import copy
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxrstudy import numerics
from cxrstudy.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's tools (dvc, ruff, ...) beside this interpreter

# Small enough for seconds per stage on two CPU cores, large enough that every part of the split is non-empty. No
# external test site: a test that needs one sets `ingest.external`.
TINY: dict[str, Any] = {
    "seeds": [1, 2],
    "numerics": {"threads": 1},
    "ingest": {"external": "none", "phantom": {"n_images": 120, "image_size": 96}},
    "preprocess": {"image_size": 32, "workers": 1},
    "train": {"image_size": 32, "epochs": 2, "batch_size": 16, "val_batch_size": 64},
    "evaluate": {"batch_size": 64},
    "report": {"coverage": {"reps": 20}},  # the coverage stage's simulated test sets per condition
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def project_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_raw(**override: Any) -> dict[str, Any]:
    """The project's params.yaml with the tiny settings and `override` merged in."""
    return deep_merge(deep_merge(project_params(), TINY), override)


def tiny_params(**override: Any) -> Params:
    return parse_params(tiny_raw(**override))


def section(*path: str, **override: Any) -> Any:
    """A section of the project's params.yaml (e.g. `section("ingest", "nih")`), validated, with `override`."""
    raw: Any = project_params()
    for key in path:
        raw = raw[key]
    model: Any = Params
    for key in path:
        model = model.model_fields[key].annotation
    return model.model_validate({**raw, **override})


# The tests run stages in this process too: pin its numerics as the command line would, before torch or NumPy load.
numerics.pin(tiny_params().numerics)

from cxrstudy.data import ingest, preprocess, split  # noqa: E402 - after the numerics are pinned

# What `dvc status --json` prints for an up-to-date project (a tuple, for `status in UP_TO_DATE`).
UP_TO_DATE: tuple[dict[str, Any], ...] = ({},)


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def workspace(tiny_data: Path, root: Path, **override: Any) -> Path:
    """A project folder: a copy of the tiny data/ folder (raw, processed, splits) and the tiny parameters with
    `override` in params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_data / "data", root / "data")
    write_params(root / "params.yaml", tiny_raw(**override))
    return root


# --------------------------------------------------------------------------------------------------------------------
# Commands in a fresh process: the command line, git, DVC


def find_tool(name: str) -> str | None:
    """A tool from this interpreter's bin folder (the venv) or from PATH."""
    candidate = BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def command_env(**extra: str) -> dict[str, str]:
    """This environment with the venv's tools first on PATH, this interpreter for the pipeline's stages
    (scripts/python), progress bars off and a git identity, plus `extra`."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "CXRSTUDY_PYTHON": sys.executable,
        "TQDM_DISABLE": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        **extra,
    }


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    """A finished command's exit status and output, for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def sh(args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
       timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `args` in `cwd` (environment: `command_env()` unless given), output captured; with `check`, an exit
    status other than 0 fails the test with the output shown."""
    done = subprocess.run(args, cwd=cwd, env=command_env() if env is None else env, text=True, capture_output=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} (in {cwd}) failed\n{shown(done)}")
    return done


def git(repo: Path, *args: str) -> str:
    """`git ARGS` in `repo` with a test identity; its stripped stdout. Fails the test on a non-zero exit."""
    return sh(["git", *args], repo).stdout.strip()


def cli(*args: str, params: str = "params.yaml") -> list[str]:
    """`python -m cxrstudy --params PARAMS ARGS` with this interpreter."""
    return [sys.executable, "-m", "cxrstudy", "--params", params, *args]


def run_cli(ws: Path, *args: str, params: str = "params.yaml", timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command line run in `ws`, output captured (environment: this one with progress bars off)."""
    return subprocess.run(cli(*args, params=params), cwd=ws, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TQDM_DISABLE": "1"} if env is None else env)


def patched_cli(patch: str, *args: str) -> list[str]:
    """The command line in a fresh interpreter after `patch` (Python source) has run: a fault injected there goes
    through `cxrstudy.cli.main` and its exit status exactly as in production."""
    code = textwrap.dedent(patch) + "\nimport sys\nfrom cxrstudy.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, "--params", "params.yaml", *args]


def run_patched(ws: Path, patch: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(patched_cli(patch, *args), cwd=ws, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TQDM_DISABLE": "1"})


def project_files() -> list[str]:
    """The project's tracked and untracked-but-not-ignored files, relative to ROOT."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def copy_project(dest: Path, drop: Iterable[str] = (), params: dict[str, Any] | None = None) -> Path:
    """The project's files (`project_files()`) but those in or under `drop`, with `params` as params.yaml when
    given, committed on `main` of a new git repository at `dest`."""
    dropped = tuple(drop)
    dest.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        if not any(name == d or name.startswith(d.rstrip("/") + "/") for d in dropped):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if params is not None:
        write_params(dest / "params.yaml", params)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "project")
    return dest


# --------------------------------------------------------------------------------------------------------------------
# Outputs before and after: byte-identical, and no temporary left behind


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself), by relative name: what "byte-identical" is checked against."""
    return {"": path.read_bytes()} if path.is_file() else tree_bytes(path)


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """The names whose bytes differ (or that appeared or vanished) between two snapshots."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def leftovers(root: Path) -> list[str]:
    """Temporaries of the atomic writers (`.NAME.tmp-*`, `.NAME.old-*`) anywhere under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------------------------------------------------
# Markdown tables (the report, the PR comment, experiments.md)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in `text` as rows of cells (header first, the rule row kept). A table must follow a
    blank line (GitHub renders it as text otherwise) and every row must end with a pipe."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    previous = ""
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not current:
                assert previous.strip() == "", f"a table must follow a blank line: {line!r}"
            assert line.endswith("|"), f"table row does not end with a pipe: {line!r}"
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])])
        elif current:
            out.append(current)
            current = []
        previous = line
    return out


def table_after(text: str, heading: str, index: int = 0) -> list[list[str]]:
    """The `index`-th table after the first line `heading`: its header, then its body rows (rule row dropped)."""
    found = markdown_tables(text.split(heading, 1)[1])[index]
    return [found[0], *found[2:]]


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after `heading`."""
    return table_after(text, heading)[1:]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/raw, data/processed and data/splits for the tiny parameters (built once)."""
    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params()
    ingest.run(params, "internal", root / "data/raw", workers=1)
    preprocess.run(params, root / "data/raw", root / "data/processed")
    split.run(params, root / "data/raw", root / "data/splits", root / "data/processed")
    return root


# The project's recorded results (for its own parameters): a copy with the tiny parameters makes its own.
# reports/experiments.json stays: it is an input of the report stage (the loss x CLAHE grid's summary, which
# `cxrstudy experiments` makes from DVC experiments, not the pipeline); the report says when it is another run's.
REPORTS = ("reports/report.md", "reports/figures", "reports/experiments.md")
RESULTS = ("dvc.lock", "data", "models", "metrics", "predictions", "plots", *REPORTS)


@dataclass(frozen=True)
class Process:
    """A running process as /proc shows it: its pid, arguments, working folder and environment."""

    pid: int
    args: list[bytes]
    cwd: str
    environ: list[bytes]


def processes() -> Iterator[Process]:
    """Every process this user may read in /proc (one that ends while being read is left out)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # another user's: its arguments are readable, its environment is not
            environ = []
        yield Process(int(proc.name), args, cwd, environ)


def tree_bytes(root: Path, paths: Iterable[str] = (".",)) -> dict[str, bytes]:
    """The bytes of every file at or under each of `paths` (relative to `root`; default: all of it), by its path
    relative to `root`: two trees compare equal exactly when they hold the same files with the same bytes
    (`snapshot` for one file or folder)."""
    found: dict[str, bytes] = {}
    for name in paths:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found.update({f.relative_to(root).as_posix(): f.read_bytes() for f in files})
    return found


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder all test processes of this run share (pytest-xdist's workers: the one above their own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build(folder)` in the first test process of this run that asks for it; the others wait
    for it (a lock beside it) and reuse it. A build that failed leaves no mark, so the next one starts afresh."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(folder.name + ".done")
    with folder.with_name(folder.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with the tiny parameters and none of its recorded results, after `dvc repro`, all
    committed on `main`: the pipeline runs once per test run, whatever the number of test processes. Tests change a
    copy: `copy_repro`."""

    def build(root: Path) -> None:
        copy_project(root, drop=RESULTS, params=tiny_raw())
        sh(["dvc", "repro"], root)
        git(root, "add", "-A")
        git(root, "commit", "-qm", "dvc repro")

    return built_once(shared_folder(tmp_path_factory) / "repro" / "project", build)


def copy_repro(repro_project: Path, dest: Path) -> Path:
    """A copy of `repro_project` (its git history and DVC cache included) at `dest`."""
    shutil.copytree(repro_project, dest, symlinks=True)
    return dest


# --------------------------------------------------------------------------------------------------------------------
# The learning controls: a small but learnable phantom, and two models trained on it for 5 epochs at 64 px, one on its
# labels and one on shuffled labels. Made once per test run and shared by the positive and negative controls of
# tests/test_train.py (AUROC) and tests/test_localize.py (where the model looks): training, not the checks, is
# what costs. One thread, as every test: beside the other test process on 2 cores, each training took 143 s with two
# threads and 54-58 s with one; 3 epochs are too few for the localisation control (it then hits the box less often
# than the shuffled boxes do).

CONTROL: dict[str, Any] = {"ingest": {"phantom": {"n_images": 600, "image_size": 128}},
                           "preprocess": {"image_size": 64},
                           "train": {"image_size": 64, "epochs": 5, "batch_size": 16, "lr": 0.002}}


def control_params(shuffled: bool = False, **override: Any) -> Params:
    """The controls' parameters (labels shuffled in training, for the negative control), with `override` merged in
    (sections training does not read, e.g. `report` or `localize`)."""
    return tiny_params(**deep_merge(deep_merge(CONTROL, {"train": {"shuffle_labels": shuffled}}), override))


@pytest.fixture(scope="session")
def control_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controls' data: data/raw, data/processed and data/splits."""
    params = control_params()

    def build(root: Path) -> None:
        ingest.run(params, "internal", root / "data/raw", workers=2)
        preprocess.run(params, root / "data/raw", root / "data/processed")
        split.run(params, root / "data/raw", root / "data/splits", root / "data/processed")

    return built_once(shared_folder(tmp_path_factory) / "control" / "data", build)


def _control_model(data: Path, shuffled: bool) -> Path:
    from cxrstudy.learning import train

    def build(out: Path) -> None:
        train.run(control_params(shuffled), 1, data / "data/raw", data / "data/processed", data / "data/splits",
                  out / "model", out / "history.csv", out / "checkpoint")

    return built_once(data.parent / ("shuffled" if shuffled else "trained"), build) / "model"


@pytest.fixture(scope="session")
def control_model(control_data: Path) -> Path:
    """Seed 1's model trained on the controls' data (a folder holding model.pt; read it, never write in it)."""
    return _control_model(control_data, shuffled=False)


@pytest.fixture(scope="session")
def shuffled_control_model(control_data: Path) -> Path:
    """The same, trained on shuffled labels."""
    return _control_model(control_data, shuffled=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`mount(size_bytes)` mounts a tmpfs of that size and returns its folder; unmounted afterwards."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root on Linux (mount -t tmpfs)")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")


# --------------------------------------------------------------------------------------------------------------------
# System tools: `@pytest.mark.tools("gh", "jq")` skips a test, naming what is missing, unless every tool is found
# (beside this interpreter or on PATH; "a|b" takes either). In CI (CXR_REQUIRE_TOOLS=1, set by .ci/run) a missing
# tool fails the test instead: CI must run everything.

REQUIRE_TOOLS = "CXR_REQUIRE_TOOLS"


def missing_tools(names: Iterable[str]) -> list[str]:
    return [name for name in names if not any(find_tool(alt) for alt in name.split("|"))]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = missing_tools(name for mark in item.iter_markers("tools") for name in mark.args)
    if not missing:
        return
    message = f"needs {', '.join(missing)}, not found (.ci/run names the Debian package of each and installs them)"
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{message}; {REQUIRE_TOOLS}=1 makes a missing tool a failure", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    if os.environ.get(REQUIRE_TOOLS) == "1":
        # tests/containers.py's own switch for the image and act tests.
        os.environ.setdefault("CXR_REQUIRE_CONTAINERS", "1")


# --------------------------------------------------------------------------------------------------------------------
# Outputs a stage cannot replace: an immutable or append-only file (chattr), a mount point (a container volume)


def skip_unless_chattr(scratch: Path) -> None:
    """Skip the test unless `chattr +i` works under `scratch` (root, and a file system with Linux attributes)."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr (e2fsprogs)")
    probe = scratch / "chattr-probe"
    probe.mkdir()
    done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.rmdir()
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not possible here ({done.stderr.strip()}): needs root and Linux file attributes")


def skip_unless_mount(scratch: Path) -> None:
    """Skip the test unless a folder under `scratch` can be bind-mounted (root on Linux)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a mount point needs root on Linux (mount --bind)")
    probe = scratch / "mount-probe"
    probe.mkdir()
    done = subprocess.run(["mount", "--bind", str(probe), str(probe)], capture_output=True, text=True)
    subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")


@contextmanager
def protecting(scratch: Path) -> Iterator[Callable[[Path, str], None]]:
    """`protect(path, "i")` makes `path` immutable (`"a"`: append-only) with chattr, undone at the end; skips the test
    where chattr cannot work (tried under `scratch`)."""
    skip_unless_chattr(scratch)
    done: list[tuple[Path, str]] = []

    def protect(path: Path, flag: str = "i") -> None:
        subprocess.run(["chattr", f"+{flag}", str(path)], check=True, capture_output=True)
        done.append((path, flag))

    try:
        yield protect
    finally:
        for path, flag in reversed(done):
            subprocess.run(["chattr", f"-{flag}", str(path)], capture_output=True)


@contextmanager
def mounting(scratch: Path) -> Iterator[Callable[[Path], None]]:
    """`mount_point(folder)` bind-mounts `folder` onto itself, as a container volume is mounted, undone at the end;
    skips the test where that is not possible (tried under `scratch`)."""
    skip_unless_mount(scratch)
    mounted: list[Path] = []

    def mount_point(folder: Path) -> None:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True)
        mounted.append(folder)

    try:
        yield mount_point
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def protect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path, str], None]]:
    with protecting(tmp_path_factory.mktemp("chattr")) as make:
        yield make


@pytest.fixture
def mount_point(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], None]]:
    with mounting(tmp_path_factory.mktemp("mount")) as make:
        yield make
