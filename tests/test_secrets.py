"""Safe defaults: secrets stay out of outputs, logs, reports and git; pickles load as weights only; loopback.

The central test runs the whole pipeline on the tiny dataset through the command line with credentials planted
where real ones live (the environment, `.dvc/config.local`), with the metrics endpoint on and a Pushgateway that
refuses every push (so the failure path is logged too), and then searches every file the run wrote and everything
it printed for them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from cxrstudy.errors import InputError
from cxrstudy.labels import FINDINGS
from cxrstudy.learning.checkpoint import load_checkpoint
from cxrstudy.learning.model import build_model
from cxrstudy.learning.predict import load_trained
from cxrstudy.learning.train import make_optimizer, make_scheduler
from cxrstudy.params import load_params, parse_params
from tests.conftest import ROOT, free_port, run_cli, tiny_params, tiny_raw, write_params


@pytest.mark.slow
def test_a_planted_secret_reaches_no_output_log_or_report(tmp_path: Path) -> None:
    marker = f"planted-{uuid.uuid4().hex}"
    ws = tmp_path / "ws"
    (ws / ".dvc").mkdir(parents=True)
    # Where DVC keeps a remote's credentials (`dvc remote modify --local`): git-ignored, never read by the stages.
    local_config = ws / ".dvc" / "config.local"
    local_config.write_text(
        "[core]\n    remote = storage\n"
        "['remote \"storage\"']\n    url = s3://bucket/cxrstudy\n"
        f"    access_key_id = {marker}-dvc-key-id\n    secret_access_key = {marker}-dvc-secret\n"
    )
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "AWS_ACCESS_KEY_ID": f"{marker}-aws-key-id",
        "AWS_SECRET_ACCESS_KEY": f"{marker}-aws-secret",
        "AWS_SESSION_TOKEN": f"{marker}-aws-session",
        "GH_TOKEN": f"{marker}-gh",
        "GITHUB_TOKEN": f"{marker}-github",
        "DVC_REMOTE_URL": f"s3://{marker}-bucket/cxrstudy",
    }
    write_params(ws / "params.yaml", tiny_raw(
        seeds=[1],
        train={"epochs": 1},
        report={"bootstrap": 20},
        monitor={"port": 0, "pushgateway": f"127.0.0.1:{free_port()}", "push_timeout_s": 2.0},
    ))
    stages = [
        ["ingest", "--workers", "1"],
        ["preprocess"],
        ["split"],
        ["train", "--seed", "1"],
        ["evaluate", "--seed", "1"],
        ["coverage"],
        ["report"],
    ]
    printed: list[str] = []
    for args in stages:
        proc = run_cli(ws, *args, timeout=600, env=env)
        assert proc.returncode == 0, f"{args[0]}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        printed += [proc.stdout, proc.stderr]
    assert "push to Pushgateway" in "".join(printed), "the failing push was not logged: the test lost its point"
    assert (ws / "reports/report.md").is_file() and (ws / "metrics/eval/seed_1.json").is_file()

    written = [p for p in ws.rglob("*") if p.is_file() and p != local_config]
    for folder in ("data/raw", "data/processed", "data/splits", "models", "metrics", "plots", "reports"):
        assert any(p.is_relative_to(ws / folder) for p in written), f"{folder}: nothing written, nothing searched"
    leaked = [str(p.relative_to(ws)) for p in written if marker.encode() in p.read_bytes()]
    assert leaked == [], f"the planted secret is in {leaked}"
    assert all(marker not in text for text in printed), "the planted secret was printed"
    assert local_config.read_text().count(marker) == 2, "a stage touched .dvc/config.local"


def test_dvc_local_config_never_reaches_git() -> None:
    """Credentials go to `.dvc/config.local` (`dvc remote modify --local`), which git ignores; the committed
    `.dvc/config` holds none."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=ROOT)
    assert ignored.returncode == 0, ".dvc/config.local is not git-ignored"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [f for f in tracked.splitlines() if f.endswith("config.local")]
    committed = (ROOT / ".dvc" / "config").read_text() if (ROOT / ".dvc" / "config").exists() else ""
    keys = r"(access_key_id|secret_access_key|session_token|password|credentialpath|token)\s*="
    assert not re.search(keys, committed, flags=re.IGNORECASE), "credentials in the committed .dvc/config"


@pytest.mark.parametrize(
    "override",
    [
        {"monitor": {"pushgateway": "http://cxr:SECRET-in-url@127.0.0.1:9091"}},
        {"ingest": {"nih": {"base_url": "https://cxr:SECRET-in-url@mirror.example.org/nih/"}}},
        {"ingest": {"nih": {"metadata_url": "https://cxr:SECRET-in-url@mirror.example.org/meta/"}}},
    ],
    ids=["pushgateway", "nih-base-url", "nih-metadata-url"],
)
def test_params_refuse_credentials_in_a_url_without_echoing_them(override: dict[str, dict[str, object]]) -> None:
    """params.yaml is committed to git: a user:password@ in one of its URLs would publish it (and every failed
    push or download would print it)."""
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(**override))
    message = str(err.value)
    assert "SECRET-in-url" not in message, message
    assert "credential" in message, message


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints and models load as weights only (pickle cannot run code)


class _RunsCode:
    """Unpickling this runs `Path(marker).touch()`: what a tampered checkpoint could do under `weights_only=False`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_a_tampered_model_file_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"model": build_model(len(FINDINGS), pretrained=False).state_dict(), "extra": _RunsCode(marker)}, path)

    with pytest.raises(Exception, match="(?i)weights.only"):
        load_trained(path)
    assert not marker.exists()


def test_a_tampered_checkpoint_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"fingerprint": "fp", "epoch": 1, "payload": _RunsCode(marker)}, path)
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, tiny_params().train)
    sched = make_scheduler(opt, tiny_params().train, steps=4)

    with pytest.raises(Exception, match="(?i)weights.only"):
        load_checkpoint(path, {"parameters": "fp"}, model, opt, sched, torch.Generator())
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    calls = []
    for path in sorted((ROOT / "src" / "cxrstudy").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):  # the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start(): end + 1]))
    assert calls, "no torch.load found: the test lost its point"
    unsafe = [f"{name}: {call}" for name, call in calls if not re.search(r"weights_only\s*=\s*True", call)]
    assert unsafe == []


# --------------------------------------------------------------------------------------------------------------------
# The metrics endpoint (the image's non-root user: test_docker.py) and the committed parameters


def test_the_project_params_serve_metrics_on_loopback_only() -> None:
    monitor = load_params(ROOT / "params.yaml").monitor
    assert monitor.bind in {"127.0.0.1", "::1", "localhost"}
    assert monitor.port is None, "params.yaml opens a metrics endpoint by default"


def test_the_committed_params_hold_no_credentials() -> None:
    """Nothing credential-like sits in the committed params.yaml (it is in git, and in every report's inputs)."""
    text = (ROOT / "params.yaml").read_text()
    assert not re.search(r"://[^/\s@]+:[^/\s@]+@", text), "a URL with credentials in params.yaml"
    raw = yaml.safe_load(text)
    assert "password" not in str(raw).lower() and "secret" not in str(raw).lower()
