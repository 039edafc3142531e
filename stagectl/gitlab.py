"""Posting the plan/preview comment on a GitLab merge request, updated in place.

The comment's first line is a marker (``<!-- aistack:... -->``). The note of the merge request
that starts with the same marker *and was written by this token's user* is edited instead of
adding a new one, so a merge request carries one plan comment and one preview comment however
often it is pushed. A note by anyone else (another bot, a token that was rotated) is left alone:
a new note is created, and so it is when GitLab refuses the edit (403).

The note goes to the merge request's own project, ``CI_MERGE_REQUEST_PROJECT_ID`` (the target
project: for a fork's merge request that is not ``CI_PROJECT_ID``), with the token in
``GITLAB_NOTES_TOKEN``: a project access token with the ``api`` scope and the Reporter role,
which can comment but neither push nor read CI/CD variables.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_VARIABLE = "GITLAB_NOTES_TOKEN"


class GitLabError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MergeRequest:
    api: str  # CI_API_V4_URL, e.g. https://gitlab.example.com/api/v4
    project: str  # CI_MERGE_REQUEST_PROJECT_ID (else CI_PROJECT_ID)
    iid: str  # CI_MERGE_REQUEST_IID
    token: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MergeRequest:
        env = os.environ if env is None else env
        project = env.get("CI_MERGE_REQUEST_PROJECT_ID") or env.get("CI_PROJECT_ID")
        missing = [n for n in ("CI_API_V4_URL", "CI_MERGE_REQUEST_IID", TOKEN_VARIABLE) if not env.get(n)]
        if not project:
            missing.insert(1, "CI_MERGE_REQUEST_PROJECT_ID")
        if missing:
            raise GitLabError(f"cannot comment: {', '.join(missing)} not set (run in a merge-request pipeline with "
                              f"a project access token in {TOKEN_VARIABLE})")
        return cls(env["CI_API_V4_URL"].rstrip("/"), str(project), env["CI_MERGE_REQUEST_IID"], env[TOKEN_VARIABLE])

    def _request(self, method: str, url: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "PRIVATE-TOKEN": self.token, "Content-Type": "application/json"})
        path = url[len(self.api):]
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise GitLabError(f"GitLab API {method} {path.split('?')[0]}: HTTP {exc.code} {exc.read()[:200]!r}",
                              exc.code) from None
        except urllib.error.URLError as exc:
            raise GitLabError(f"GitLab API unreachable at {self.api}: {exc.reason}") from None

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        project = urllib.parse.quote(self.project, safe="")
        return self._request(method, f"{self.api}/projects/{project}/merge_requests/{self.iid}{path}", body)

    def current_user_id(self) -> int:
        """The id of the token's user (``GET /user``; a project access token's bot user)."""
        user = self._request("GET", f"{self.api}/user")
        return int(user["id"])

    def _own_note(self, marker: str, me: int) -> int | None:
        page = 1
        while True:
            notes = self._call("GET", f"/notes?per_page=100&page={page}&sort=asc") or []
            for note in notes:
                author = (note.get("author") or {}).get("id")
                if author == me and str(note.get("body", "")).startswith(marker):
                    return int(note["id"])
            if len(notes) < 100:
                return None
            page += 1

    def upsert_note(self, body: str) -> tuple[str, int]:
        """Update this user's note carrying the same marker, or create one; returns (action, note id)."""
        marker = body.splitlines()[0] if body.startswith("<!--") else None
        if marker:
            note = self._own_note(marker, self.current_user_id())
            if note is not None:
                try:
                    self._call("PUT", f"/notes/{note}", {"body": body})
                    return "updated", note
                except GitLabError as exc:
                    if exc.status != 403:
                        raise
        created = self._call("POST", "/notes", {"body": body})
        return "created", int(created["id"])
