"""The merge-request comment: created once, then updated in place, only ever the bot's own note
(against the local fake of GitLab's notes API, tests/delivery/fake_gitlab.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagectl.gitlab import GitLabError, MergeRequest
from tests.delivery.fake_gitlab import GitLab, Token, User, serve

BOT, OLD_BOT, HUMAN = User(11, "project_7_bot_1"), User(9, "project_7_bot_old"), User(3, "alice")
MARKER = "<!-- aistack:stagectl-diff -->"


@pytest.fixture
def gitlab() -> Iterator[GitLab]:
    state = GitLab(projects={7: "group/app", 8: "bob/app"}, merge_requests={(7, 5)},
                   tokens={"glpat-notes": Token(BOT), "glpat-old": Token(OLD_BOT),
                           "glpat-read": Token(BOT, ("read_api",))})
    state.add_note(7, 5, "LGTM", HUMAN)
    with serve(state):
        yield state


def _mr(gitlab: GitLab, token: str = "glpat-notes", project: str = "7") -> MergeRequest:
    return MergeRequest.from_env({"CI_API_V4_URL": gitlab.api, "CI_MERGE_REQUEST_PROJECT_ID": project,
                                  "CI_PROJECT_ID": "8", "CI_MERGE_REQUEST_IID": "5", "GITLAB_NOTES_TOKEN": token})


def _bodies(gitlab: GitLab) -> list[tuple[str, str]]:
    return [(n["author"]["username"], n["body"]) for n in gitlab.notes[(7, 5)]]


def test_note_is_created_then_updated_in_the_target_project(gitlab):
    mr = _mr(gitlab)
    assert mr.upsert_note(f"{MARKER}\nfirst")[0] == "created"
    assert mr.upsert_note(f"{MARKER}\nsecond")[0] == "updated"
    assert mr.upsert_note("<!-- aistack:pulumi-preview -->\npreview")[0] == "created"
    assert _bodies(gitlab) == [("alice", "LGTM"), ("project_7_bot_1", f"{MARKER}\nsecond"),
                               ("project_7_bot_1", "<!-- aistack:pulumi-preview -->\npreview")]
    # CI_MERGE_REQUEST_PROJECT_ID (the target project), not CI_PROJECT_ID (a fork's)
    called = {p.split("?")[0] for _, p, _ in gitlab.calls}
    assert called >= {"/api/v4/user", "/api/v4/projects/7/merge_requests/5/notes"}
    assert not gitlab.refused


def test_a_marked_note_of_another_author_is_left_alone(gitlab):
    gitlab.add_note(7, 5, f"{MARKER}\nby the previous bot", OLD_BOT)
    gitlab.add_note(7, 5, f"{MARKER}\nquoted by a human", HUMAN)
    action, _ = _mr(gitlab).upsert_note(f"{MARKER}\nnew")
    assert action == "created"
    assert _bodies(gitlab)[1:] == [("project_7_bot_old", f"{MARKER}\nby the previous bot"),
                                   ("alice", f"{MARKER}\nquoted by a human"), ("project_7_bot_1", f"{MARKER}\nnew")]
    assert not any(method == "PUT" for method, _, _ in gitlab.calls)


def test_a_refused_edit_falls_back_to_a_new_note(gitlab):
    mr = _mr(gitlab)
    _, first = mr.upsert_note(f"{MARKER}\nfirst")
    gitlab.frozen_notes.add(first)
    action, second = mr.upsert_note(f"{MARKER}\nsecond")
    assert action == "created" and second != first
    assert ("PUT", f"/api/v4/projects/7/merge_requests/5/notes/{first}") in [(m, p) for m, p, _ in gitlab.calls]
    assert [b for _, b in _bodies(gitlab)] == ["LGTM", f"{MARKER}\nfirst", f"{MARKER}\nsecond"]


def test_the_project_path_is_accepted_url_encoded(gitlab):
    assert _mr(gitlab, project="group/app").upsert_note(f"{MARKER}\nx")[0] == "created"
    assert any("/projects/group%2Fapp/" in p for _, p, _ in gitlab.calls)


def test_a_token_without_api_scope_is_a_clear_error(gitlab):
    with pytest.raises(GitLabError, match=r"GET /user: HTTP 403"):
        _mr(gitlab, token="glpat-read").upsert_note(f"{MARKER}\nx")


def test_missing_ci_variables_are_named():
    with pytest.raises(GitLabError, match="CI_MERGE_REQUEST_IID, GITLAB_NOTES_TOKEN not set"):
        MergeRequest.from_env({"CI_API_V4_URL": "http://x", "CI_PROJECT_ID": "1"})


def test_unreachable_api_is_a_clear_error():
    mr = MergeRequest("http://127.0.0.1:9/api/v4", "1", "1", "t")
    with pytest.raises(GitLabError, match=r"GitLab API unreachable at http://127\.0\.0\.1:9/api/v4"):
        mr.upsert_note("<!-- m -->\nx")


def _mr_note_cli(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    comment = tmp_path / "comment.md"
    comment.write_text(f"{MARKER}\nplan\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_"))}
    return subprocess.run([sys.executable, "-m", "stagectl", "mr-note", str(comment)], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_forks_merge_request_without_the_token_is_not_an_error(tmp_path):
    result = _mr_note_cli(tmp_path, CI_API_V4_URL="http://127.0.0.1:9/api/v4", CI_MERGE_REQUEST_IID="5",
                          CI_PROJECT_ID="8", CI_MERGE_REQUEST_PROJECT_ID="7", CI_MERGE_REQUEST_SOURCE_PROJECT_ID="8")
    assert result.returncode == 0 and "not posted: a merge request from a fork (project 8)" in result.stdout


def test_a_same_project_merge_request_without_the_token_fails(tmp_path):
    result = _mr_note_cli(tmp_path, CI_API_V4_URL="http://127.0.0.1:9/api/v4", CI_MERGE_REQUEST_IID="5",
                          CI_PROJECT_ID="7", CI_MERGE_REQUEST_PROJECT_ID="7", CI_MERGE_REQUEST_SOURCE_PROJECT_ID="7")
    assert result.returncode == 2 and "GITLAB_NOTES_TOKEN not set" in result.stderr
