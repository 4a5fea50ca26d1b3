"""End to end: the DVC S3 remote against a real S3 server (moto's) on 127.0.0.1.

The remote is configured with the documented command (`scripts/remote.sh`, see
docs/remote.md); the pipeline runs on tiny parameters in a temporary git copy of
the project, `dvc push` sends data and models to the bucket, and a fresh
`git clone` gets them back with `dvc pull` and is up to date. Credentials only
ever live in the environment or in the git-ignored `.dvc/config.local`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UP_TO_DATE, copy_repro, free_port

pytestmark = pytest.mark.slow

pytest.importorskip(
    "moto.server",
    reason="moto's S3 server is not installed (pip install -r requirements-dev.txt, which pins moto[server])",
)

BUCKET = "cxrstudy-remote-test"
REMOTE_URL = f"s3://{BUCKET}/cache"
# Made up per run (not literals of this file), so finding them in any tracked file is meaningful.
KEY_ID = f"AKIATEST{uuid.uuid4().hex[:12].upper()}"
SECRET = f"cxrstudy-test-secret-{uuid.uuid4().hex}"
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
# DVC-tracked outputs (cached, so pushed and pulled) compared byte for byte between the two checkouts. The
# predictions are `cache: false` outputs (in git, so that CI can read a base revision's), not among them.
OUTS = ("data/raw", "data/processed", "data/splits", "models/seed_1", "models/seed_2")


class S3Server:
    """moto's S3-compatible server as a subprocess, its output in a log file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, env: dict[str, str], attempts: int = 3, timeout_s: float = 60.0) -> str:
        for _ in range(attempts):  # the free port may be taken again before moto binds it
            port = free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
            self.endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                        if resp.status == 200:
                            return self.endpoint
                except (urllib.error.URLError, OSError):
                    time.sleep(0.2)
            self.stop()
        raise AssertionError(f"moto's S3 server did not start\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def output(self, tail: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- moto server log (tail) ---\n{text[-tail:]}"


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any AWS identity, isolated from ~/.aws and the user's DVC config."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV}
    isolated = tmp_path / "isolated"
    (isolated / "dvc-global").mkdir(parents=True)
    (isolated / "dvc-system").mkdir()
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TQDM_DISABLE": "1",
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(isolated / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(isolated / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(isolated / "dvc-site-cache"),
        "AWS_CONFIG_FILE": str(isolated / "aws-config"),  # absent: no profile, region or endpoint from ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": str(isolated / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    })
    return env


@pytest.fixture
def s3(tmp_path: Path, base_env: dict[str, str]) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "moto.log")
    try:
        server.start(base_env)
        yield server
    finally:
        server.stop()


def creds(env: dict[str, str]) -> dict[str, str]:
    return {**env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


def run(args: list[str], cwd: Path, env: dict[str, str], server: S3Server, timeout: float = 600) -> str:
    """Run a command, output captured; on failure show it (and the S3 server's log)."""
    try:
        done = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        partial = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)]
        raise AssertionError(f"{' '.join(args)} timed out after {timeout}s\n" + "\n".join(partial)
                             + f"\n{server.output()}") from exc
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} (in {cwd}) exited {done.returncode}\n--- stdout ---\n{done.stdout}\n"
                             f"--- stderr ---\n{done.stderr}\n{server.output()}")
    return done.stdout + done.stderr


def digest(root: Path, out: str) -> dict[str, str]:
    """sha256 of every file under an output (a file or a directory), keyed by path relative to `root`."""
    path = root / out
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_no_secret_in_git(repo: Path, env: dict[str, str], server: S3Server) -> None:
    config = (repo / ".dvc" / "config").read_text()
    assert SECRET not in config and KEY_ID not in config, config
    assert "secret_access_key" not in config and "access_key_id" not in config, config
    tracked = run(["git", "ls-files", "-z"], repo, env, server).split("\0")
    for name in filter(None, tracked):
        path = repo / name
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and KEY_ID.encode() not in data, f"credentials in tracked {name}"
    # .dvc/config.local is kept out of git by DVC's own .dvc/.gitignore
    run(["git", "check-ignore", "-q", ".dvc/config.local"], repo, env, server)


def test_push_then_pull_into_a_fresh_clone(tmp_path: Path, base_env: dict[str, str], s3: S3Server,
                                          repro_project: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)

    # 1. The project after `dvc repro` on the tiny parameters, its results committed (conftest.repro_project),
    #    configured with the documented command: URL + endpoint in .dvc/config (committed), credentials from the
    #    environment only. Every result the pipeline made must come back to the fresh clone.
    origin = copy_repro(repro_project, tmp_path / "origin")
    out = run(["bash", "scripts/remote.sh", REMOTE_URL, "--endpoint", s3.endpoint], origin, creds(base_env), s3)
    assert "storage" in out
    config = (origin / ".dvc" / "config").read_text()
    assert REMOTE_URL in config and s3.endpoint in config and "remote = storage" in config, config
    assert not (origin / ".dvc" / "config.local").exists()
    run(["git", "add", "-A"], origin, base_env, s3)
    run(["git", "commit", "-qm", "DVC remote"], origin, base_env, s3)
    assert run(["git", "status", "--porcelain"], origin, base_env, s3).strip() == ""
    run(["dvc", "push"], origin, creds(base_env), s3)
    assert "in sync" in run(["dvc", "status", "--cloud"], origin, creds(base_env), s3)
    assert_no_secret_in_git(origin, base_env, s3)

    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="cache/")
            for o in page.get("Contents", [])]
    assert any(k.startswith("cache/files/md5/") for k in keys), keys[:20]

    # 2. A fresh clone: configure the same remote in the git-ignored local config, credentials saved there
    #    (--save-credentials), then pull with no AWS credentials in the environment at all.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, base_env, s3)
    for out_path in OUTS:
        assert not (clone / out_path).exists(), f"{out_path} came through git"
    run(["bash", "scripts/remote.sh", REMOTE_URL, "--endpoint", s3.endpoint, "--local", "--save-credentials"],
        clone, creds(base_env), s3)
    local = (clone / ".dvc" / "config.local").read_text()
    assert SECRET in local and REMOTE_URL in local, "the credentials and remote went to .dvc/config.local"
    assert (clone / ".dvc" / "config").read_text() == (origin / ".dvc" / "config").read_text()
    assert run(["git", "status", "--porcelain"], clone, base_env, s3).strip() == ""  # config.local is ignored
    assert_no_secret_in_git(clone, base_env, s3)

    run(["dvc", "pull"], clone, base_env, s3)
    status = run(["dvc", "status", "--json"], clone, base_env, s3)
    assert json.loads(status) in UP_TO_DATE, status
    assert "in sync" in run(["dvc", "status", "--cloud"], clone, base_env, s3)
    assert run(["git", "status", "--porcelain"], clone, base_env, s3).strip() == ""

    model = "models/seed_1/model.pt"
    assert (clone / model).is_file()
    assert (clone / model).read_bytes() == (origin / model).read_bytes()
    # The machine that trained a model is recorded beside it but is not DVC's (.dvcignore): it stays on that machine.
    for seed in (1, 2):
        machine = f"models/seed_{seed}/machine.json"
        assert (origin / machine).is_file() and not (clone / machine).exists()
        (origin / machine).unlink()
    for out_path in OUTS:
        expected = digest(origin, out_path)
        assert expected, f"{out_path} is empty in the original"
        assert digest(clone, out_path) == expected, f"{out_path} differs after dvc pull"
