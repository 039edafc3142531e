"""A test server implementing TensorFlow Serving's documented REST API with the real SavedModel.

TensorFlow Serving itself (``tensorflow_model_server``) cannot be installed here, so the TF Serving
backend is tested against this stand-in. It runs under ``.venv-tf`` and serves the SavedModel with
TensorFlow (``tf.saved_model.load``), speaking the REST API as TF Serving documents it
(``tensorflow_serving/g3doc/api_rest.md``) and as its HTTP handler answers:

- ``GET /v1/models/{name}[/versions/{v}]``: ``{"model_version_status": [{"version": "1",
  "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}``;
- ``GET /v1/models/{name}[/versions/{v}]/metadata``: ``{"model_spec": ..., "metadata":
  {"signature_def": {"signature_def": {...}}}}`` (the SignatureDefMap as proto JSON);
- ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"signature_name"?, "instances"}``
  (row format, answered with ``{"predictions": [...]}``) or ``{"inputs"}`` (columnar, answered
  with ``{"outputs": ...}``);
- errors as ``{"error": "<message>"}`` with TF Serving's status mapping (INVALID_ARGUMENT 400,
  NOT_FOUND 404, INTERNAL 500, UNAVAILABLE 503).

Like TF Serving's default version policy it serves the latest integer version directory below
``--model_base_path``, looking for one every ``--file_system_poll_wait_seconds`` until there is one
(until then the model status answers 404 ``Could not find any versions of model <name>``).
``--load_delay`` keeps the model in state ``LOADING`` for that many seconds after start (predict
then answers 404 ``Servable not found``, as TF Serving does).

And like TF Serving since 2.7 (built without the S3 filesystem; tensorflow/serving#1963) it reads
local paths only: a base path with a URI scheme (``s3://...``) is never loaded. The server stays
up, logs ``FileSystemStoragePathSource encountered a filesystem access error: Could not find base
path s3://... for servable <name> with error UNIMPLEMENTED: File system scheme 's3' not
implemented (file: 's3://...')`` at every poll, and the model never becomes available.

Usage (under .venv-tf): ``python server.py --port 8501 --model_name digits --model_base_path DIR``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?")
DEFAULT_SIGNATURE = "serving_default"


class Status(Exception):
    """A TensorFlow status with its HTTP code (http_server.cc's ToHTTPStatusCode)."""

    def __init__(self, http: int, message: str) -> None:
        super().__init__(message)
        self.http = http
        self.message = message


def invalid(message: str) -> Status:
    return Status(400, message)


SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class Servable:
    """The latest version below the base path, loaded with TensorFlow."""

    def __init__(self, name: str, base_path: str, load_delay: float, poll_s: float = 1.0) -> None:
        self.name = name
        self.base_path_text = base_path
        self.base_path = Path(base_path)
        self.version: int | None = None
        self.loaded: Any = None
        self.signature_defs: dict[str, Any] = {}
        self.state = "START"
        self._delay = load_delay
        self._poll_s = poll_s
        threading.Thread(target=self._watch, daemon=True).start()

    def _versions(self) -> list[int]:
        scheme = SCHEME.match(self.base_path_text)
        if scheme and scheme.group(1) != "file":
            print(f"E file_system_storage_path_source.cc:353] FileSystemStoragePathSource encountered a filesystem "
                  f"access error: Could not find base path {self.base_path_text} for servable {self.name} with error "
                  f"UNIMPLEMENTED: File system scheme '{scheme.group(1)}' not implemented "
                  f"(file: '{self.base_path_text}')", file=sys.stderr, flush=True)
            return []
        if not self.base_path.is_dir():
            print(f"E FileSystemStoragePathSource encountered a filesystem access error: Could not find base path "
                  f"{self.base_path_text} for servable {self.name}", file=sys.stderr, flush=True)
            return []
        return sorted(int(p.name) for p in self.base_path.iterdir() if p.is_dir() and p.name.isdigit())

    def _watch(self) -> None:
        while True:
            versions = self._versions()
            if versions:
                self.version = versions[-1]
                self._load()
                return
            time.sleep(self._poll_s)

    def _load(self) -> None:
        self.state = "LOADING"
        path = self.base_path / str(self.version)
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        defs = proto.meta_graphs[0].signature_def
        self.signature_defs = {
            key: json_format.MessageToDict(defs[key], preserving_proto_field_name=True) for key in defs
        }
        loaded = tf.saved_model.load(str(path))
        if self._delay:
            time.sleep(self._delay)
        self.loaded = loaded
        self.state = "AVAILABLE"

    def check(self, name: str, version: str | None, *, status_api: bool = False) -> None:
        if name != self.name or self.version is None:
            if status_api:
                raise Status(404, f"Could not find any versions of model {name}")
            spec = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise Status(404, f"Servable not found for request: {spec}")
        if version is not None and int(version) != self.version:
            if status_api:
                raise Status(404, f"Could not find version {version} of model {name}")
            raise Status(404, f"Servable not found for request: Specific({name}, {version})")
        if not status_api and self.state != "AVAILABLE":
            spec = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise Status(404, f"Servable not found for request: {spec}")

    def status(self) -> dict[str, Any]:
        return {
            "model_version_status": [
                {"version": str(self.version), "state": self.state, "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {
                "signature_def": {
                    "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                    "signature_def": self.signature_defs,
                }
            },
        }

    def predict(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("JSON Value: ... Is not object")
        signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
        if signature_name not in self.signature_defs:
            raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
        if "instances" in body and "inputs" in body:
            raise invalid("Not both 'inputs' and 'instances' can be specified in the request.")
        if "instances" not in body and "inputs" not in body:
            raise invalid("Missing 'inputs' or 'instances' key")
        fn = self.loaded.signatures[signature_name]
        _, specs = fn.structured_input_signature
        row_format = "instances" in body
        raw = body["instances"] if row_format else body["inputs"]
        values: dict[str, Any] = {}
        if row_format:
            if not isinstance(raw, list) or not raw:
                raise invalid("'instances' must be a non-empty list")
            if isinstance(raw[0], dict):
                for key in specs:
                    if not all(isinstance(item, dict) and key in item for item in raw):
                        raise invalid(f"Missing input '{key}' in one or more instances")
                    values[key] = [item[key] for item in raw]
            elif len(specs) == 1:
                values[next(iter(specs))] = raw
            else:
                raise invalid("Expected object with named inputs for a signature with several inputs")
        elif isinstance(raw, dict):
            values = dict(raw)
        elif len(specs) == 1:
            values[next(iter(specs))] = raw
        else:
            raise invalid("'inputs' must be an object for a signature with several inputs")
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise invalid(
                f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the "
                f"set {{{','.join(sorted(specs))}}}."
            )
        missing = sorted(set(specs) - set(values))
        if missing:
            raise invalid(f"Missing input tensor alias(es): {', '.join(missing)}")
        tensors = {}
        for key, spec in specs.items():
            try:
                array = np.asarray(values[key], dtype=spec.dtype.as_numpy_dtype)
            except (TypeError, ValueError) as exc:
                raise invalid(
                    f"Failed to process element: {key} of '{'instances' if row_format else 'inputs'}' "
                    f"list. Error: {exc}"
                ) from None
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid(
                    f"Input to reshape is a tensor with {array.size} values, but the requested shape "
                    f"is incompatible with {spec.shape} for input '{key}' (got shape {list(array.shape)})"
                )
            tensors[key] = tf.constant(array)
        try:
            outputs = fn(**tensors)
        except tf.errors.InvalidArgumentError as exc:
            raise invalid(exc.message) from None
        except Exception as exc:
            raise Status(500, f"{type(exc).__name__}: {exc}") from None
        result = {key: value.numpy() for key, value in outputs.items()}
        if row_format:
            n = len(next(iter(result.values())))
            if len(result) == 1:
                only = next(iter(result.values()))
                return {"predictions": [only[i].tolist() for i in range(n)]}
            return {"predictions": [{key: value[i].tolist() for key, value in result.items()} for i in range(n)]}
        if len(result) == 1:
            return {"outputs": next(iter(result.values())).tolist()}
        return {"outputs": {key: value.tolist() for key, value in result.items()}}


def make_handler(servable: Servable) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-tensorflow-serving"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _reply(self, code: int, payload: Any) -> None:
            data = json.dumps(payload, allow_nan=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            try:
                self._reply(200, self._dispatch(method, path, body))
            except Status as status:
                self._reply(status.http, {"error": status.message})

        def _dispatch(self, method: str, path: str, body: bytes) -> Any:
            if not path.lower().startswith("/v1/"):
                raise Status(404, f"Malformed request: {method} {path}")
            match = PREDICT.fullmatch(path)
            if method == "POST" and match:
                name, version, verb = match.groups()
                if verb != "predict":
                    raise Status(501, f"{verb} is not implemented by this test server")
                servable.check(name, version)
                try:
                    parsed = json.loads(body) if body else None
                except ValueError as exc:
                    raise invalid(f"JSON Parse error: {exc}") from None
                return servable.predict(parsed)
            match = STATUS.fullmatch(path)
            if method == "GET" and match:
                name, version, sub = match.groups()
                if not name:
                    raise invalid("Missing model name in request.")
                servable.check(name, version, status_api=True)
                if sub:
                    servable.check(name, version)
                    return servable.metadata()
                return servable.status()
            raise invalid(f"Malformed request: {method} {path}")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--load_delay", type=float, default=0.0)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    servable = Servable(args.model_name, args.model_base_path, args.load_delay, args.file_system_poll_wait_seconds)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(servable))
    server.daemon_threads = True
    print(f"serving {args.model_name} on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
