"""A fake GitHub REST API on 127.0.0.1, over HTTPS, for `gh api` to talk to.

`gh` sends requests for any host other than github.com to
``https://HOST/api/v3/...`` with ``Authorization: token $GH_ENTERPRISE_TOKEN``,
and Go reads extra trusted certificates from ``SSL_CERT_FILE``. So pointing
``GH_HOST`` at this server (with its self-signed certificate) runs the real
`gh` against it: pagination through ``Link`` headers, JSON bodies, errors.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "o/r"


class FakeGitHub:
    """Just enough of the REST API: issue comments and pull requests of one repository."""

    def __init__(self) -> None:
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.pulls: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.next_id = 1000
        self.auth: set[str] = set()
        self.base_url = ""

    def add_comment(self, number: int, body: str, login: str) -> dict[str, Any]:
        self.next_id += 1
        comment = {
            "id": self.next_id,
            "body": body,
            "user": {"login": login},
            "html_url": f"https://example.invalid/{REPO}/pull/{number}#issuecomment-{self.next_id}",
        }
        self.comments.setdefault(number, []).append(comment)
        return comment

    def handle(self, method: str, url: str, payload: dict[str, Any] | None) -> tuple[int, Any, dict[str, str]]:
        body: dict[str, Any] = payload or {}
        parsed = urlparse(url)
        path, query = parsed.path, parse_qs(parsed.query)
        path = path.removeprefix("/api/v3")
        self.requests.append((method, path))
        prefix = f"/repos/{REPO}"
        if m := re.fullmatch(rf"{prefix}/issues/(\d+)/comments", path):
            number = int(m.group(1))
            if method == "GET":
                page, per = int(query.get("page", ["1"])[0]), int(query.get("per_page", ["30"])[0])
                items = self.comments.get(number, [])
                headers = {}
                if page * per < len(items):
                    nxt = urlencode({"per_page": per, "page": page + 1})
                    headers["Link"] = f'<{self.base_url}/api/v3{path}?{nxt}>; rel="next"'
                return 200, items[(page - 1) * per : page * per], headers
            if method == "POST":
                return 201, self.add_comment(number, body["body"], "github-actions[bot]"), {}
        if (m := re.fullmatch(rf"{prefix}/issues/comments/(\d+)", path)) and method == "PATCH":
            for items in self.comments.values():
                for c in items:
                    if c["id"] == int(m.group(1)):
                        c["body"] = body["body"]
                        return 200, c, {}
            return 404, {"message": "Not Found"}, {}
        if (m := re.fullmatch(rf"{prefix}/pulls/(\d+)", path)) and method == "GET":
            pr = self.pulls.get(int(m.group(1)))
            return (200, pr, {}) if pr else (404, {"message": "Not Found"}, {})
        if path == f"{prefix}/pulls" and method == "POST":
            for pr in self.pulls.values():
                if pr["head"]["ref"] == body["head"]:
                    return 422, {"message": "A pull request already exists"}, {}
            number = len(self.pulls) + 1
            self.pulls[number] = {
                "number": number,
                "head": {"ref": body["head"], "sha": SHA},
                "base": body["base"],
                "title": body["title"],
                "body": body["body"],
                "state": "open",
            }
            return 201, self.pulls[number], {}
        if path == f"{prefix}/pulls" and method == "GET":
            head = query["head"][0].split(":", 1)[1]
            found = [pr for pr in self.pulls.values() if pr["head"]["ref"] == head and pr["state"] == "open"]
            return 200, found, {}
        return 404, {"message": f"no route {method} {path}"}, {}


@dataclass
class Served:
    api: FakeGitHub
    host: str  # 127.0.0.1:PORT, for GH_HOST
    cert: Path  # the server's self-signed certificate, for SSL_CERT_FILE
    config_dir: Path  # an empty GH_CONFIG_DIR

    def env(self, base: dict[str, str], token: str = "t0ken") -> dict[str, str]:
        """`base` with gh pointed at this server (and no github.com token)."""
        env = {k: v for k, v in base.items() if k not in {"GITHUB_TOKEN", "GH_TOKEN", "GITHUB_OUTPUT", "GH_REPO"}}
        env.update(
            {
                "GH_HOST": self.host,
                "GH_ENTERPRISE_TOKEN": token,
                "GH_CONFIG_DIR": str(self.config_dir),
                "GH_NO_UPDATE_NOTIFIER": "1",
                "GH_PROMPT_DISABLED": "1",
                "NO_COLOR": "1",
                "SSL_CERT_FILE": str(self.cert),
                "GITHUB_REPOSITORY": REPO,
            }
        )
        if not token:
            env.pop("GH_ENTERPRISE_TOKEN")
        return env


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def gh_available() -> bool:
    return shutil.which("gh") is not None and shutil.which("openssl") is not None and shutil.which("jq") is not None


@contextmanager
def serve(directory: Path) -> Iterator[Served]:
    api = FakeGitHub()
    cert, key = make_certificate(directory)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length)) if length else None
            api.auth.add(self.headers.get("Authorization", ""))
            status, data, headers = api.handle(self.command, self.path, payload)
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    host = f"127.0.0.1:{server.server_address[1]}"
    api.base_url = f"https://{host}"
    config_dir = directory / "gh-config"
    config_dir.mkdir()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(api, host, cert, config_dir)
    finally:
        server.shutdown()
        server.server_close()
