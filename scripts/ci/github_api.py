#!/usr/bin/env python3
"""Minimal GitHub REST client for the CI workflows (standard library only).

Subcommands:

``upsert-comment``
    Create, or update in place, the one comment on a pull request that starts
    with the marker ``<!-- cxrstudy-ci:MARKER -->`` and was written by
    ``--author`` (default ``github-actions[bot]``, the identity of
    GITHUB_TOKEN). The pull request comes from ``--pr`` or from a JSON file
    (``--pr-file``, ``{"number": N, "head_sha": "..."}``) that the untrusted
    CI run uploaded: its number must be a positive integer, and with
    ``--expect-head-sha`` (the trusted ``workflow_run.head_sha``) the pull
    request's current head must be that commit, otherwise nothing is posted.
    That check also drops results of superseded pushes that finish late.

``open-pr``
    Open a pull request from ``--head`` into ``--base`` (or find the open one)
    and print its number.

Environment: GH_TOKEN or GITHUB_TOKEN (required), GITHUB_API_URL (default
https://api.github.com), GITHUB_REPOSITORY (default for ``--repo``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_AUTHOR = "github-actions[bot]"
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class GitHub:
    def __init__(self, token: str, api_url: str, repo: str) -> None:
        if not _REPO_RE.match(repo):
            raise SystemExit(f"error: not an owner/name repository: {repo!r}")
        self.token = token
        self.api_url = api_url.rstrip("/")
        self.repo = repo

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.api_url}/repos/{self.repo}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("X-GitHub-Api-Version", "2022-11-28")
        req.add_header("User-Agent", "cxrstudy-ci")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise ApiError(exc.code, detail) from None
        return json.loads(raw) if raw else None

    def paginate(self, path: str) -> list[Any]:
        items: list[Any] = []
        sep = "&" if "?" in path else "?"
        page = 1
        while True:
            batch = self.request("GET", f"{path}{sep}per_page=100&page={page}")
            items.extend(batch)
            if len(batch) < 100:
                return items
            page += 1


def marker_line(marker: str) -> str:
    return f"<!-- cxrstudy-ci:{marker} -->"


def _token() -> str:
    token = os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN")
    if not token:
        raise SystemExit("error: set GH_TOKEN (or GITHUB_TOKEN)")
    return token


def parse_pr_number(value: object) -> int:
    """Accept a positive integer (or its decimal string) and nothing else."""
    if isinstance(value, bool):
        raise ValueError(f"not a pull request number: {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,9}", value):
        number = int(value)
    else:
        raise ValueError(f"not a pull request number: {value!r}")
    if number <= 0:
        raise ValueError(f"not a pull request number: {value!r}")
    return number


def upsert_comment(gh: GitHub, number: int, marker: str, body: str, author: str) -> tuple[str, dict[str, Any]]:
    line = marker_line(marker)
    if not body.startswith(line):
        body = f"{line}\n{body}"
    for comment in gh.paginate(f"/issues/{number}/comments"):
        user = (comment.get("user") or {}).get("login")
        if user == author and str(comment.get("body", "")).startswith(line):
            updated = gh.request("PATCH", f"/issues/comments/{comment['id']}", {"body": body})
            return "updated", updated
    created = gh.request("POST", f"/issues/{number}/comments", {"body": body})
    return "created", created


def cmd_upsert_comment(args: argparse.Namespace) -> int:
    gh = GitHub(_token(), args.api_url, args.repo)
    if args.pr is not None:
        raw: object = args.pr
    else:
        try:
            raw = json.loads(Path(args.pr_file).read_text(encoding="utf-8")).get("number")
        except (OSError, ValueError, AttributeError) as exc:
            raise SystemExit(f"error: unreadable --pr-file: {exc}") from None
    try:
        number = parse_pr_number(raw)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None

    if args.expect_head_sha:
        if not _SHA_RE.match(args.expect_head_sha):
            raise SystemExit(f"error: not a commit SHA: {args.expect_head_sha!r}")
        pr = gh.request("GET", f"/pulls/{number}")
        head = (pr.get("head") or {}).get("sha")
        if head != args.expect_head_sha:
            print(
                f"pull request #{number} head is {head}, not {args.expect_head_sha}: "
                "not commenting (superseded run, or the PR number does not belong to this run)"
            )
            return 0

    body = Path(args.body_file).read_text(encoding="utf-8")
    action, comment = upsert_comment(gh, number, args.marker, body, args.author)
    print(f"{action} comment {comment.get('html_url') or comment.get('id')} on #{number}")
    return 0


def cmd_open_pr(args: argparse.Namespace) -> int:
    gh = GitHub(_token(), args.api_url, args.repo)
    body = Path(args.body_file).read_text(encoding="utf-8") if args.body_file else ""
    try:
        pr = gh.request(
            "POST",
            "/pulls",
            {"title": args.title, "head": args.head, "base": args.base, "body": body},
        )
    except ApiError as exc:
        if exc.status != 422:
            raise
        owner = args.repo.split("/")[0]
        query = urllib.parse.urlencode({"head": f"{owner}:{args.head}", "base": args.base, "state": "open"})
        existing = gh.request("GET", f"/pulls?{query}")
        if not existing:
            raise
        pr = existing[0]
    print(pr["number"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY", ""))
    ap.add_argument("--api-url", default=os.environ.get("GITHUB_API_URL", "https://api.github.com"))
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upsert-comment", help="create or update the marked PR comment")
    which = up.add_mutually_exclusive_group(required=True)
    which.add_argument("--pr", help="pull request number")
    which.add_argument("--pr-file", help='JSON file {"number": N, ...} from the CI run')
    up.add_argument("--marker", required=True)
    up.add_argument("--body-file", required=True)
    up.add_argument("--expect-head-sha", default=None)
    up.add_argument("--author", default=DEFAULT_AUTHOR)
    up.set_defaults(func=cmd_upsert_comment)

    op = sub.add_parser("open-pr", help="open (or find) a pull request, print its number")
    op.add_argument("--head", required=True)
    op.add_argument("--base", required=True)
    op.add_argument("--title", required=True)
    op.add_argument("--body-file", default=None)
    op.set_defaults(func=cmd_open_pr)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ApiError as exc:
        print(f"error: GitHub API {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
