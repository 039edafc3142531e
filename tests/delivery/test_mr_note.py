"""The merge-request comment is created once and then updated in place (against a fake GitLab API)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stagectl.gitlab import GitLabError, MergeRequest


class FakeGitLab(BaseHTTPRequestHandler):
    notes: list[dict] = []
    calls: list[tuple[str, str, str]] = []

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, self.headers["PRIVATE-TOKEN"]))
        self._reply(200, self.notes)

    def do_POST(self) -> None:
        self.calls.append(("POST", self.path, self.headers["PRIVATE-TOKEN"]))
        note = {"id": 100 + len(self.notes), "body": self._body()["body"]}
        self.notes.append(note)
        self._reply(201, note)

    def do_PUT(self) -> None:
        self.calls.append(("PUT", self.path, self.headers["PRIVATE-TOKEN"]))
        note_id = int(self.path.rsplit("/", 1)[1])
        note = next(n for n in self.notes if n["id"] == note_id)
        note["body"] = self._body()["body"]
        self._reply(200, note)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gitlab() -> Iterator[str]:
    FakeGitLab.notes = [{"id": 7, "body": "LGTM"}]
    FakeGitLab.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitLab)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v4"
    server.shutdown()


def test_note_is_created_then_updated(gitlab):
    mr = MergeRequest.from_env({"CI_API_V4_URL": gitlab, "CI_PROJECT_ID": "group/app", "CI_MERGE_REQUEST_IID": "5",
                                "GITLAB_PROJECT_TOKEN": "glpat-x"})
    assert mr.upsert_note("<!-- aistack:stagectl-diff -->\nfirst") == ("created", 101)
    assert mr.upsert_note("<!-- aistack:stagectl-diff -->\nsecond") == ("updated", 101)
    assert mr.upsert_note("<!-- aistack:pulumi-preview -->\npreview") == ("created", 102)
    bodies = {n["id"]: n["body"] for n in FakeGitLab.notes}
    assert bodies == {7: "LGTM", 101: "<!-- aistack:stagectl-diff -->\nsecond",
                      102: "<!-- aistack:pulumi-preview -->\npreview"}
    methods = [(m, p.split("?")[0]) for m, p, _ in FakeGitLab.calls]
    assert methods[:3] == [("GET", "/api/v4/projects/group%2Fapp/merge_requests/5/notes"),
                           ("POST", "/api/v4/projects/group%2Fapp/merge_requests/5/notes"),
                           ("GET", "/api/v4/projects/group%2Fapp/merge_requests/5/notes")]
    assert ("PUT", "/api/v4/projects/group%2Fapp/merge_requests/5/notes/101") in methods
    assert {token for _, _, token in FakeGitLab.calls} == {"glpat-x"}


def test_missing_ci_variables_are_named():
    with pytest.raises(GitLabError, match="CI_MERGE_REQUEST_IID, GITLAB_PROJECT_TOKEN not set"):
        MergeRequest.from_env({"CI_API_V4_URL": "http://x", "CI_PROJECT_ID": "1"})


def test_unreachable_api_is_a_clear_error():
    mr = MergeRequest("http://127.0.0.1:9/api/v4", "1", "1", "t")
    with pytest.raises(GitLabError, match=r"GitLab API unreachable at http://127\.0\.0\.1:9/api/v4"):
        mr.upsert_note("<!-- m -->\nx")
