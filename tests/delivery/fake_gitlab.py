"""A local stand-in for the parts of GitLab's REST API (v4) the pipeline's jobs call.

Implemented as GitLab documents them, and nothing else:

* ``GET /api/v4/user``: the token's user (a project access token's bot user).
* ``GET /api/v4/projects/:id/merge_requests/:iid/notes`` (``per_page``, ``page``, ``sort``),
  ``POST`` one (``{"body"}`` -> 201), ``PUT .../notes/:note_id`` (``{"body"}``): editing a note
  of another author is 403, as on GitLab.

A request without a known ``PRIVATE-TOKEN`` is 401; a token whose scopes lack ``api`` is 403; a
project or merge request the fake was not given is 404; any other path or method is 404 and is
recorded in :attr:`GitLab.refused`, so a test can assert that a job called nothing the fake
does not implement. ``:id`` is a numeric id or the URL-encoded path, as GitLab accepts.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class User:
    id: int
    username: str


@dataclass
class Token:
    user: User
    scopes: tuple[str, ...] = ("api",)


@dataclass
class GitLab:
    """State of the fake: projects (id and path), merge requests, notes, tokens, calls."""

    projects: dict[int, str] = field(default_factory=dict)  # id -> full path
    merge_requests: set[tuple[int, int]] = field(default_factory=set)  # (project id, iid)
    tokens: dict[str, Token] = field(default_factory=dict)
    notes: dict[tuple[int, int], list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, token)
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: notes GitLab refuses to let even their author edit (403), e.g. once the author lost the role
    frozen_notes: set[int] = field(default_factory=set)
    url: str = ""
    _next_id: int = 100

    def add_note(self, project: int, iid: int, body: str, author: User) -> dict[str, Any]:
        self._next_id += 1
        note = {"id": self._next_id, "body": body, "system": False, "noteable_iid": iid,
                "author": {"id": author.id, "username": author.username}}
        self.notes.setdefault((project, iid), []).append(note)
        return note

    def project_id(self, ref: str) -> int | None:
        ref = unquote(ref)
        if ref.isdigit():
            return int(ref) if int(ref) in self.projects else None
        return next((pid for pid, path in self.projects.items() if path == ref), None)

    @property
    def api(self) -> str:
        return f"{self.url}/api/v4"


_NOTES = re.compile(r"^/api/v4/projects/(?P<project>[^/]+)/merge_requests/(?P<iid>\d+)/notes(?:/(?P<note>\d+))?$")


def _handler(state: GitLab) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _json_body(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                return None
            return body if isinstance(body, dict) else None

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            token_value = self.headers.get("PRIVATE-TOKEN") or ""
            state.calls.append((method, self.path, token_value))
            token = state.tokens.get(token_value)
            if token is None:
                self._reply(401, {"message": "401 Unauthorized"})
                return
            if "api" not in token.scopes:
                self._reply(403, {"error": "insufficient_scope", "scope": "api"})
                return
            if url.path == "/api/v4/user" and method == "GET":
                self._reply(200, {"id": token.user.id, "username": token.user.username, "bot": True})
                return
            match = _NOTES.match(url.path)
            if not match:
                state.refused.append((method, self.path))
                self._reply(404, {"error": "404 Not Found"})
                return
            project = state.project_id(match["project"])
            iid = int(match["iid"])
            if project is None or (project, iid) not in state.merge_requests:
                self._reply(404, {"message": "404 Merge Request Not Found"})
                return
            notes = state.notes.setdefault((project, iid), [])
            note_id = match["note"]
            if note_id is None and method == "GET":
                query = parse_qs(url.query)
                per_page = min(int((query.get("per_page") or ["20"])[0]), 100)
                page = int((query.get("page") or ["1"])[0])
                ordered = notes if (query.get("sort") or ["desc"])[0] == "asc" else list(reversed(notes))
                self._reply(200, ordered[(page - 1) * per_page:page * per_page])
            elif note_id is None and method == "POST":
                body = self._json_body()
                if not body or not isinstance(body.get("body"), str) or not body["body"]:
                    self._reply(400, {"message": {"body": ["can't be blank"]}})
                    return
                self._reply(201, state.add_note(project, iid, body["body"], token.user))
            elif note_id is not None and method == "PUT":
                note = next((n for n in notes if n["id"] == int(note_id)), None)
                if note is None:
                    self._reply(404, {"message": "404 Note Not Found"})
                    return
                if note["author"]["id"] != token.user.id or note["id"] in state.frozen_notes:
                    self._reply(403, {"message": "403 Forbidden"})
                    return
                body = self._json_body()
                if not body or not isinstance(body.get("body"), str):
                    self._reply(400, {"message": "400 Bad request - body is missing"})
                    return
                note["body"] = body["body"]
                self._reply(200, note)
            else:
                state.refused.append((method, self.path))
                self._reply(405 if note_id is None else 404, {"error": f"{method} not implemented here"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@contextmanager
def serve(state: GitLab) -> Iterator[GitLab]:
    """Serve ``state`` on 127.0.0.1 (a free port) for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
