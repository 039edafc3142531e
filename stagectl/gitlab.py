"""Posting the plan/preview comment on a GitLab merge request, updated in place.

The comment's first line is a marker (``<!-- aistack:... -->``); an existing note of the merge
request that starts with the same marker is edited instead of adding a new one, so a merge
request carries one plan comment and one preview comment however often it is pushed.
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


class GitLabError(Exception):
    pass


@dataclass(frozen=True)
class MergeRequest:
    api: str  # CI_API_V4_URL, e.g. https://gitlab.example.com/api/v4
    project: str  # CI_PROJECT_ID
    iid: str  # CI_MERGE_REQUEST_IID
    token: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MergeRequest:
        env = os.environ if env is None else env
        names = ("CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID", "GITLAB_PROJECT_TOKEN")
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise GitLabError(f"cannot comment: {', '.join(missing)} not set (run in a merge-request pipeline with "
                              "a project access token in GITLAB_PROJECT_TOKEN)")
        return cls(env["CI_API_V4_URL"].rstrip("/"), env["CI_PROJECT_ID"], env["CI_MERGE_REQUEST_IID"],
                   env["GITLAB_PROJECT_TOKEN"])

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = f"{self.api}/projects/{urllib.parse.quote(self.project, safe='')}/merge_requests/{self.iid}{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "PRIVATE-TOKEN": self.token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise GitLabError(f"GitLab API {method} {path}: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except urllib.error.URLError as exc:
            raise GitLabError(f"GitLab API unreachable at {self.api}: {exc.reason}") from None

    def upsert_note(self, body: str) -> tuple[str, int]:
        """Create the note, or update the one carrying the same marker; returns (action, note id)."""
        marker = body.splitlines()[0] if body.startswith("<!--") else None
        if marker:
            page = 1
            while True:
                notes = self._call("GET", f"/notes?per_page=100&page={page}&sort=asc")
                for note in notes or []:
                    if str(note.get("body", "")).startswith(marker):
                        self._call("PUT", f"/notes/{note['id']}", {"body": body})
                        return "updated", int(note["id"])
                if not notes or len(notes) < 100:
                    break
                page += 1
        created = self._call("POST", "/notes", {"body": body})
        return "created", int(created["id"])
