"""Benchmark of the inference service: numbers, not pass/fail (``make bench``, never from tests).

    python bench/service.py                    # a summary
    python bench/service.py --json             # one JSON object
    python bench/service.py --only heavy       # one part: service, heavy, cold or durability
    python bench/service.py --durability       # also STORE_DURABILITY=wal against buffered

Everything runs in one go on this machine, and the servers being compared are loaded in turn,
round after round (medians reported), so that machine noise hits them alike; compare ratios, not
absolute numbers, across machines:

- ``raw_ort_batch1_us``: median ``InferenceSession.run`` of the demo model, batch 1, 1 thread.
- ``floor_rps`` / ``floor_p50_ms``: the floor, a FastAPI endpoint on the same uvicorn settings that
  reads the raw body, parses it with orjson and answers the same JSON (the service's own answer,
  canned): no validation, inference, metrics, logs or prediction log. Concurrency 32 for rps,
  1 for p50.
- ``service_rps`` / ``service_p50_ms``: the real service (``python -m service``, defaults, local
  store, access log to a file), same requests, same load.
- ``v2_json_rps`` / ``v2_binary_rps`` (and ``_p50_ms``): the same service and load on
  ``POST /v2/models/{name}/infer``, the row as JSON ``data`` vs as KServe v2 binary tensor data
  (``Inference-Header-Content-Length``, raw little-endian float32, binary outputs asked for with
  ``parameters.binary_data_output``), in the same rounds as ``service_rps``.
- ``heavy_nobatch_rps`` / ``heavy_batch_rps``: the service with a generated 64-2048-2048-10 MLP
  (17 MB), concurrency 32, ``BATCHING=off`` vs ``on``; ``ratios.heavy_batch_over_nobatch`` is the
  ratio of the medians, ``details.heavy_ratio_rounds`` the ratio in each round (the two servers
  are loaded one after the other within a round) with its median, min and max;
  ``details.heavy_batches`` the rows per backend run and the share of one-row runs (from
  ``/metrics``). ``--baseline DIR`` adds the ``service`` package in ``DIR`` (another version of
  it) with ``BATCHING=on`` to the same rounds (``details.heavy_baseline``).
- ``wal_rps`` / ``wal_p99_ms`` vs ``buffered_rps`` / ``buffered_p99_ms`` (with ``--durability``):
  the service (demo model, v1 requests, concurrency 32) with ``STORE_DURABILITY=wal`` (every
  answer waits for its records' group-committed write + fsync) vs the default ``buffered``, in the
  same rounds; ``details.durability`` adds concurrency 1 and the file system the write-ahead file
  is on (``--spool-dir``: fsync on a tmpfs costs nothing, so measure on the disk the service uses).
- ``cold_start_s``: process start to the first ``/readyz`` 200, with the model and card read from
  an S3 endpoint (a moto server over HTTP), median of 5.
- ``rss_mb``: resident memory of the service process after its load runs.
- ``triton_rps`` / ``triton_p50_ms`` (with ``--triton``): the same service with ``BACKEND=triton``
  over gRPC (the GPU host's setting) to a local ``tritonserver`` serving the same model (the
  nvidia-pytriton wheel's binary in ``.venv-triton``, Python backend running ONNX Runtime on CPU:
  ``scripts/triton-venv.sh``), in the same rounds as the in-process service; ``details.triton_http_*``
  the same over HTTP. On one small CPU machine this measures the remote hop's cost, not a GPU.
- ``details.bare_asgi_*``: for reference, the floor without FastAPI (a plain ASGI callable on the
  same uvicorn): the service answers its hot path below FastAPI too (see ``service/asgi.py``).

The load generator is a small HTTP/1.1 keep-alive client on uvloop (one process, N connections,
one request in flight per connection); it needs far less CPU per request than the servers. Every
load run also records the server's CPU time per answered request (``cpu_us``, from
``/proc/<pid>/stat``): on a shared machine it moves far less than rps does. ``details.spread``
gives each figure's median, min and max over the rounds.
Targets: service_rps >= 0.9 x floor_rps, heavy_batch_rps >= 4 x heavy_nobatch_rps,
cold_start_s < 1.0, rss_mb < 250.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

ROOT = Path(__file__).resolve().parents[1]
HEAVY_DIMS = (64, 2048, 2048, 10)


# --------------------------------------------------------------------------------------------
# load generator


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.buf = bytearray()
        self.transport: Any = None
        self.sent = 0.0
        self.need = -1
        self.head = 0
        self.ok = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        if self.stats.stop:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                start = head.find(b"content-length:")
                length = int(head[start + 15 : head.find(b"\r\n", start) if head.find(b"\r\n", start) > 0 else None])
                self.ok = head.startswith(b"http/1.1 200")
                self.head = end + 4
                self.need = self.head + length
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = -1
            now = time.perf_counter()
            if self.stats.recording:
                self.stats.latencies.append(now - self.sent)
            self.stats.done += 1
            self.stats.status_ok += self.ok
            self._send()
            if not self.buf:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.done = 0
        self.status_ok = 0
        self.stop = False
        self.recording = False


async def _load(
    port: int, request: bytes, concurrency: int, warmup: float, duration: float, pid: int | None = None
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: _Conn(request, stats), "127.0.0.1", port)
        conns.append(proto)
    await asyncio.sleep(warmup)
    stats.recording = True
    stats.latencies.clear()
    cpu0 = cpu_seconds(pid) if pid is not None else float("nan")
    started, done0, ok0 = time.perf_counter(), stats.done, stats.status_ok
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    done, ok = stats.done - done0, stats.status_ok - ok0
    cpu = cpu_seconds(pid) - cpu0 if pid is not None else float("nan")
    stats.recording = False
    stats.stop = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), timeout=10)
    lat = sorted(stats.latencies)
    if not lat:
        raise RuntimeError("no responses")
    return {
        "rps": done / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "non_200": done - ok,
        "cpu_us": cpu / max(done, 1) * 1e6,
    }


def load(
    port: int, request: bytes, concurrency: int, warmup: float, duration: float, pid: int | None = None
) -> dict[str, float]:
    try:
        import uvloop

        return uvloop.run(_load(port, request, concurrency, warmup, duration, pid))
    except ImportError:
        return asyncio.run(_load(port, request, concurrency, warmup, duration, pid))


def http_request(
    path: str, body: bytes | None = None, content_type: str = "application/json", headers: str = ""
) -> bytes:
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: bench\r\n{headers}"
    if body is not None:
        head += f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def v2_request(model: str, input_name: str, rows: list[list[float]], binary: bool) -> bytes:
    """``POST /v2/models/{model}/infer`` for ``rows``: JSON ``data``, or KServe v2 binary tensor data
    in and out (``Inference-Header-Content-Length``, little-endian float32 after the JSON part)."""
    shape = [len(rows), len(rows[0])]
    tensor: dict[str, Any] = {"name": input_name, "shape": shape, "datatype": "FP32"}
    path = f"/v2/models/{model}/infer"
    if not binary:
        tensor["data"] = [x for row in rows for x in row]
        return http_request(path, orjson.dumps({"inputs": [tensor]}))
    data = np.asarray(rows, dtype="<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    head = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return http_request(
        path,
        head + data,
        "application/octet-stream",
        f"inference-header-content-length: {len(head)}\r\n",
    )


def v2_probabilities(payload: bytes, header_length: int | None) -> list[list[float]]:
    """The probabilities of a v2 answer, JSON or binary."""
    head = orjson.loads(payload[:header_length] if header_length is not None else payload)
    offset = header_length or 0
    for out in head["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if out["datatype"] == "FP32":
            n, k = out["shape"]
            if size is None:
                return np.asarray(out["data"], dtype=np.float32).reshape(n, k).tolist()
            return np.frombuffer(payload[offset : offset + size], dtype="<f4").reshape(n, k).tolist()
        offset += size or 0
    raise RuntimeError("no FP32 output in the v2 answer")


# --------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_status(port: int, path: str, timeout: float = 0.5) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = s.recv(64)
        return int(data.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def wait_ready(
    port: int, proc: subprocess.Popen[bytes], path: str, timeout: float = 60.0, poll: float = 0.005
) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if get_status(port, path) == 200:
            return time.perf_counter() - start
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(poll)
    raise RuntimeError(f"{path} not 200 after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads); NaN where /proc is not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fs_type(path: Path) -> str:
    """The file system type ``path`` is on (from /proc/mounts), or "unknown"."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for fields in mounts:
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if len(fields) > 2 and inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path = ROOT) -> None:
        self.port = port
        self.log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(cwd), start_new_session=True
        )

    def wait(self, path: str) -> float:
        wait_ready(self.port, self.proc, path)
        return time.perf_counter() - self.started

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def service_env(tmp: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "STORE", "BATCH", "API_KEY"))}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        STORE_PATH=str(tmp / f"predictions-{port}"),
        SPOOL_DIR=str(tmp / f"spool-{port}"),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def serve_floor(port: int, response_file: str, bare: bool = False) -> None:
    """The floor: FastAPI + uvicorn (same options as the service), raw body, orjson in and out.
    ``bare``: the same without FastAPI, a plain ASGI callable (reported for reference only)."""
    import uvicorn

    canned = orjson.loads(Path(response_file).read_bytes())

    def answer(raw: bytes) -> bytes:
        body = orjson.loads(raw)
        n = len(body["instances"])
        return orjson.dumps({"model": canned["model"], "predictions": canned["predictions"][:1] * n})

    app: Any
    if bare:

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    message = await receive()
                await send({"type": "lifespan.shutdown.complete"})
                return
            if scope["path"] == "/readyz":
                payload = b'{"status":"ready"}'
            else:
                chunks = []
                while True:
                    message = await receive()
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body"):
                        break
                payload = answer(b"".join(chunks))
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

    else:
        app = FastAPI()

        @app.post("/v1/predict")
        async def predict(request: Request) -> Response:
            return Response(answer(await request.body()), media_type="application/json")

        @app.get("/readyz")
        async def readyz() -> Response:
            return Response(b'{"status":"ready"}', media_type="application/json")

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


# --------------------------------------------------------------------------------------------
# models


def demo_model(tmp: Path) -> Path:
    """The demo model: ``models/digits`` if it is there, else built into ``tmp``."""
    existing = ROOT / "models" / "digits"
    if (existing / "model.onnx").is_file() and (existing / "card.json").is_file():
        return existing
    sys.path.insert(0, str(ROOT))
    from stagectl.model import build_demo_model

    build_demo_model(tmp / "digits")
    return tmp / "digits"


def heavy_model(out_dir: Path, dims: tuple[int, ...] = HEAVY_DIMS, seed: int = 0) -> Path:
    """A generated MLP (Gemm+Relu layers, softmax) and its card."""
    import hashlib

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, dims[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    card = {
        "name": "heavy-mlp",
        "version": sha[:12],
        "sha256": sha,
        "inputs": [{"name": "x", "shape": [-1, dims[0]], "dtype": "float32"}],
        "outputs": [{"name": "probabilities", "shape": [-1, dims[-1]], "dtype": "float32"}],
    }
    (out_dir / "card.json").write_text(json.dumps(card))
    return out_dir


def raw_ort_us(model_path: Path, sample: np.ndarray, repeats: int = 3000) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: sample.reshape(1, -1).astype(np.float32)}
    outputs = ["probabilities"]
    for _ in range(200):
        session.run(outputs, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(outputs, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


# --------------------------------------------------------------------------------------------
# the run


@dataclasses.dataclass(frozen=True)
class Target:
    """One load to run in each round: a server (its port and process id) and the request to send."""

    port: int
    request: bytes
    pid: int | None = None


def _rounds(
    targets: dict[str, Target], concurrency: int, rounds: int, warmup: float, duration: float, log: Any
) -> dict[str, list[dict[str, float]]]:
    """Load each target in turn, ``rounds`` times: machine noise hits all of them alike. The order
    rotates from round to round, so that no target always runs right after the same other one (what
    a server still does after its load, such as flushing its prediction log, lands on the next)."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            target = targets[name]
            result = load(target.port, target.request, concurrency, warmup, duration, target.pid)
            if result["non_200"]:
                raise RuntimeError(f"{name}: {result['non_200']} answers were not 200")
            out[name].append(result)
            log(
                f"  round {r + 1} {name} c{concurrency}: {result['rps']:.0f} rps, "
                f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
                f"server CPU {result['cpu_us']:.0f} us/request"
            )
    return out


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of ``values`` (and how many)."""
    return {
        "median": round(float(statistics.median(values)), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def _spreads(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us")
    return {name: {k: _spread([r[k] for r in rs], 1 if k == "rps" else 3) for k in keys} for name, rs in runs.items()}


def start_triton_services(
    tmp: Path, model_dir: Path, body: bytes, reference: bytes, started: dict[str, Server]
) -> Any:
    """A local Triton serving ``model_dir`` and one service per protocol in front of it (added to
    ``started`` as ``triton_grpc`` / ``triton_http``); returns the Triton server (stop it)."""
    sys.path.insert(0, str(ROOT))
    from tests.service.triton_server import TritonServer, python_backend_repository

    repository, _ = python_backend_repository(model_dir, tmp / "triton-repository")
    triton = TritonServer(repository, tmp / "triton")
    triton.start()
    want = orjson.loads(reference)["predictions"]
    for protocol, url in (("grpc", triton.grpc_url), ("http", triton.http_url)):
        port = free_port()
        name = f"triton_{protocol}"
        started[name] = Server(
            [sys.executable, "-m", "service"],
            service_env(
                tmp,
                port,
                MODEL_URI=str(model_dir / "model.onnx"),
                BACKEND="triton",
                TRITON_URL=url,
                TRITON_PROTOCOL=protocol,
            ),
            port,
            tmp / f"{name}.log",
        )
        started[name].wait("/readyz")
        got = orjson.loads(_post(port, body))["predictions"]
        if [p["label"] for p in got] != [p["label"] for p in want] or not np.allclose(
            [p["probabilities"] for p in got], [p["probabilities"] for p in want], rtol=1e-5
        ):
            raise RuntimeError(f"the service through Triton ({protocol}) does not answer like the in-process one")
    return triton


SECTIONS = ("service", "heavy", "cold", "durability")


def run(
    warmup: float,
    duration: float,
    rounds: int,
    cold_runs: int,
    log: Any,
    triton: bool = False,
    sections: tuple[str, ...] = ("service", "heavy", "cold"),
    spool_dir: Path | None = None,
    baseline: Path | None = None,
) -> dict[str, Any]:
    details: dict[str, Any] = {"spread": {}}
    summary: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    targets_met: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        digits = demo_model(tmp)
        card = json.loads((digits / "card.json").read_text())
        sys.path.insert(0, str(ROOT))
        from stagectl.model import held_out_sample

        pixels, _ = held_out_sample(0)
        body = orjson.dumps({"instances": [pixels]})
        request = http_request("/v1/predict", body)

        if "service" in sections:
            _service_section(
                tmp, digits, card, pixels, body, request, warmup, duration, rounds, log, triton,
                summary, details, ratios, targets_met,
            )  # fmt: skip
        if "heavy" in sections:
            _heavy_section(tmp, pixels, warmup, duration, rounds, log, summary, details, ratios, targets_met, baseline)
        if "cold" in sections:
            cold = cold_starts(tmp, digits, cold_runs)
            log(f"cold start (model from S3): {cold}")
            summary["cold_start_s"] = round(statistics.median(cold), 3)
            details["cold_start_runs_s"] = cold
            details["spread"]["cold_start_s"] = _spread(cold)
            targets_met["cold_start_lt_1s"] = summary["cold_start_s"] < 1.0
        if "durability" in sections:
            _durability_section(
                tmp, digits, request, warmup, duration, rounds, log, spool_dir or tmp, summary, details, ratios
            )

    summary["ratios"] = ratios
    summary["targets_met"] = targets_met
    details.update(
        model={"name": card["name"], "version": card["version"]},
        heavy_dims=list(HEAVY_DIMS),
        cpus=os.cpu_count(),
        rounds=rounds,
        warmup_s=warmup,
        duration_s=duration,
        sections=list(sections),
    )
    summary["details"] = details
    return summary


def _service_section(
    tmp: Path,
    digits: Path,
    card: dict[str, Any],
    pixels: list[float],
    body: bytes,
    request: bytes,
    warmup: float,
    duration: float,
    rounds: int,
    log: Any,
    triton: bool,
    summary: dict[str, Any],
    details: dict[str, Any],
    ratios: dict[str, Any],
    targets_met: dict[str, bool],
) -> None:
    """The demo model: raw ORT, the floor, the service (v1 JSON, v2 JSON, v2 binary), Triton."""
    summary["raw_ort_batch1_us"] = round(raw_ort_us(digits / "model.onnx", np.asarray(pixels)), 2)
    log(f"raw ORT batch 1: {summary['raw_ort_batch1_us']} us")
    v2 = {
        "v2_json": v2_request(card["name"], card["inputs"][0]["name"], [pixels], binary=False),
        "v2_binary": v2_request(card["name"], card["inputs"][0]["name"], [pixels], binary=True),
    }
    started: dict[str, Server] = {}
    triton_server: Any = None
    try:
        port = free_port()
        started["service"] = Server(
            [sys.executable, "-m", "service"],
            service_env(tmp, port, MODEL_URI=str(digits / "model.onnx")),
            port,
            tmp / "service.log",
        )
        started["service"].wait("/readyz")
        canned = _post(port, body)  # the floor answers exactly what the service answers
        (tmp / "canned.json").write_bytes(canned)
        want = [p["probabilities"] for p in orjson.loads(canned)["predictions"]]
        for kind, v2_req in v2.items():
            got = v2_probabilities(*_send(port, v2_req))
            if not np.allclose(got, want, rtol=1e-6, atol=1e-7):
                raise RuntimeError(f"the service's {kind} answer differs from its v1 answer")
        for name, extra in (("floor", []), ("bare_asgi", ["--bare"])):
            port = free_port()
            started[name] = Server(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-floor",
                    str(port),
                    str(tmp / "canned.json"),
                    *extra,
                ],
                service_env(tmp, port),
                port,
                tmp / f"{name}.log",
            )
            started[name].wait("/readyz")
            if orjson.loads(_post(port, body)) != orjson.loads(canned):
                raise RuntimeError(f"the {name} does not answer like the service")
        if triton:
            triton_server = start_triton_services(tmp, digits, body, canned, started)
        targets = {name: Target(srv.port, request, srv.proc.pid) for name, srv in started.items()}
        service = started["service"]
        for kind, v2_req in v2.items():
            targets[kind] = Target(service.port, v2_req, service.proc.pid)
        log("concurrency 32 (throughput):")
        c32 = _rounds(targets, 32, rounds, warmup, duration, log)
        log("concurrency 1 (latency):")
        c1 = _rounds(targets, 1, rounds, warmup, duration, log)
        summary["rss_mb"] = round(service.rss_mb(), 1)
    finally:
        for srv in started.values():
            srv.stop()
        if triton_server is not None:
            triton_server.stop()
    summary["floor_rps"] = round(_median(c32["floor"], "rps"), 1)
    summary["floor_p50_ms"] = round(_median(c1["floor"], "p50_ms"), 3)
    summary["service_rps"] = round(_median(c32["service"], "rps"), 1)
    summary["service_p50_ms"] = round(_median(c1["service"], "p50_ms"), 3)
    for kind in v2:
        summary[f"{kind}_rps"] = round(_median(c32[kind], "rps"), 1)
        summary[f"{kind}_p50_ms"] = round(_median(c1[kind], "p50_ms"), 3)
    if triton:
        summary["triton_rps"] = round(_median(c32["triton_grpc"], "rps"), 1)
        summary["triton_p50_ms"] = round(_median(c1["triton_grpc"], "p50_ms"), 3)
        details["triton_http_rps"] = round(_median(c32["triton_http"], "rps"), 1)
        details["triton_http_p50_ms"] = round(_median(c1["triton_http"], "p50_ms"), 3)
    details["c32"] = c32
    details["c1"] = c1
    details["spread"]["c32"] = _spreads(c32)
    details["spread"]["c1"] = _spreads(c1)
    details["bare_asgi_rps"] = round(_median(c32["bare_asgi"], "rps"), 1)
    details["bare_asgi_p50_ms"] = round(_median(c1["bare_asgi"], "p50_ms"), 3)
    ratios["service_over_floor"] = round(summary["service_rps"] / summary["floor_rps"], 3)
    ratios["v2_binary_over_v2_json"] = round(summary["v2_binary_rps"] / summary["v2_json_rps"], 3)
    if triton:
        ratios["triton_over_service"] = round(summary["triton_rps"] / summary["service_rps"], 3)
    targets_met["service_rps_ge_0.9_floor"] = ratios["service_over_floor"] >= 0.9
    targets_met["rss_lt_250mb"] = summary["rss_mb"] < 250


def _heavy_section(
    tmp: Path,
    pixels: list[float],
    warmup: float,
    duration: float,
    rounds: int,
    log: Any,
    summary: dict[str, Any],
    details: dict[str, Any],
    ratios: dict[str, Any],
    targets_met: dict[str, bool],
    baseline: Path | None = None,
) -> None:
    """The 17 MB MLP at concurrency 32, ``BATCHING=off`` vs ``on``, and how big the batches were;
    with ``baseline`` (a directory holding another version of the ``service`` package), that
    version with ``BATCHING=on`` too, in the same rounds."""
    heavy = heavy_model(tmp / "heavy")
    request = http_request("/v1/predict", orjson.dumps({"instances": [pixels]}))
    started: dict[str, Server] = {}
    batches: dict[str, dict[str, float]] = {}
    servers = [("batching_off", "off", ROOT), ("batching_on", "on", ROOT)]
    if baseline is not None:
        servers.append(("batching_on_baseline", "on", baseline))
    try:
        for name, batching, root in servers:
            port = free_port()
            env = service_env(tmp, port, MODEL_URI=str(heavy / "model.onnx"), BATCHING=batching)
            env["PYTHONPATH"] = str(root)
            started[name] = Server([sys.executable, "-m", "service"], env, port, tmp / f"heavy-{name}.log", root)
            started[name].wait("/readyz")
        on = [name for name in started if name != "batching_off"]
        before = {name: _batch_counts(started[name].port) for name in on}
        log(f"heavy MLP {'-'.join(map(str, HEAVY_DIMS))}, concurrency 32:")
        heavy_runs = _rounds(
            {n: Target(s.port, request, s.proc.pid) for n, s in started.items()}, 32, rounds, warmup, duration, log
        )
        for name in on:
            after = _batch_counts(started[name].port)
            batches[name] = {k: after[k] - before[name].get(k, 0.0) for k in after}
    finally:
        for srv in started.values():
            srv.stop()
    summary["heavy_nobatch_rps"] = round(_median(heavy_runs["batching_off"], "rps"), 1)
    summary["heavy_batch_rps"] = round(_median(heavy_runs["batching_on"], "rps"), 1)
    per_round = [
        on["rps"] / off["rps"] for on, off in zip(heavy_runs["batching_on"], heavy_runs["batching_off"], strict=True)
    ]
    details["heavy"] = heavy_runs
    details["heavy_ratio_rounds"] = _spread(per_round, 2)
    details["spread"]["heavy"] = _spreads(heavy_runs)
    details["heavy_batches"] = {
        name: {
            "rows_per_run": round(b["rows"] / b["runs"], 1),
            "one_row_share": round(b["one_row"] / b["runs"], 3),
        }
        for name, b in batches.items()
        if b.get("runs")
    }
    if baseline is not None:
        base_runs = heavy_runs["batching_on_baseline"]
        details["heavy_baseline"] = {
            "root": str(baseline),
            "rps": round(_median(base_runs, "rps"), 1),
            "ratio_over_nobatch_rounds": _spread(
                [b["rps"] / off["rps"] for b, off in zip(base_runs, heavy_runs["batching_off"], strict=True)], 2
            ),
            "batch_over_baseline_rounds": _spread(
                [on["rps"] / b["rps"] for on, b in zip(heavy_runs["batching_on"], base_runs, strict=True)]
            ),
        }
    ratios["heavy_batch_over_nobatch"] = round(summary["heavy_batch_rps"] / summary["heavy_nobatch_rps"], 2)
    targets_met["heavy_batch_ge_4x_nobatch"] = ratios["heavy_batch_over_nobatch"] >= 4.0


def _batch_counts(port: int) -> dict[str, float]:
    """Backend runs, rows and one-row runs so far, from the service's ``/metrics``."""
    text = _send(port, http_request("/metrics"))[0].decode()
    out = {"runs": 0.0, "rows": 0.0, "one_row": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "inference_batch_size_count":
            out["runs"] = float(value)
        elif name == "inference_batch_size_sum":
            out["rows"] = float(value)
        elif name == 'inference_batch_size_bucket{le="1.0"}':
            out["one_row"] = float(value)
    return out


def _durability_section(
    tmp: Path,
    digits: Path,
    request: bytes,
    warmup: float,
    duration: float,
    rounds: int,
    log: Any,
    spool_root: Path,
    summary: dict[str, Any],
    details: dict[str, Any],
    ratios: dict[str, Any],
) -> None:
    """``STORE_DURABILITY=wal`` vs ``buffered``: same model, same requests, same rounds."""
    spool_root = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=spool_root))
    started: dict[str, Server] = {}
    try:
        for durability in ("buffered", "wal"):
            port = free_port()
            started[durability] = Server(
                [sys.executable, "-m", "service"],
                service_env(
                    tmp,
                    port,
                    MODEL_URI=str(digits / "model.onnx"),
                    STORE_DURABILITY=durability,
                    SPOOL_DIR=str(spool_root / f"spool-{durability}"),
                ),
                port,
                tmp / f"durability-{durability}.log",
            )
            started[durability].wait("/readyz")
        targets = {n: Target(s.port, request, s.proc.pid) for n, s in started.items()}
        log(f"STORE_DURABILITY buffered vs wal (spool on {fs_type(spool_root)}), concurrency 32:")
        c32 = _rounds(targets, 32, rounds, warmup, duration, log)
        log("STORE_DURABILITY buffered vs wal, concurrency 1:")
        c1 = _rounds(targets, 1, rounds, warmup, duration, log)
    finally:
        for srv in started.values():
            srv.stop()
        import shutil

        shutil.rmtree(spool_root, ignore_errors=True)
    for durability in ("buffered", "wal"):
        summary[f"{durability}_rps"] = round(_median(c32[durability], "rps"), 1)
        summary[f"{durability}_p99_ms"] = round(_median(c32[durability], "p99_ms"), 3)
    per_round = [w["rps"] / b["rps"] for w, b in zip(c32["wal"], c32["buffered"], strict=True)]
    ratios["wal_over_buffered_rps"] = round(summary["wal_rps"] / summary["buffered_rps"], 3)
    details["durability"] = {
        "spool_fs": fs_type(spool_root.parent),
        "c32": c32,
        "c1": c1,
        "spread": {"c32": _spreads(c32), "c1": _spreads(c1)},
        "wal_over_buffered_rps_rounds": _spread(per_round),
    }


def _send(port: int, request: bytes) -> tuple[bytes, int | None]:
    """One request on its own connection: (body, Inference-Header-Content-Length or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request.replace(b"user-agent: bench\r\n", b"connection: close\r\n"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:100]!r}")
    header_length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"inference-header-content-length":
            header_length = int(value)
    return payload, header_length


def _post(port: int, body: bytes) -> bytes:
    return _send(port, http_request("/v1/predict", body))[0]


def cold_starts(tmp: Path, model_dir: Path, runs: int) -> list[float]:
    """Process start -> /readyz 200 with the model and card read from a moto S3 server."""
    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="ru-central1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "ru-central1"})
        for name in ("model.onnx", "card.json"):
            s3.put_object(Bucket="models", Key=f"digits/{name}", Body=(model_dir / name).read_bytes())
        times = []
        for _ in range(runs):
            port = free_port()
            env = service_env(tmp, port, MODEL_URI="s3://models/digits/model.onnx", S3_ENDPOINT_URL=endpoint, **creds)
            server = Server([sys.executable, "-m", "service"], env, port, tmp / "cold.log")
            try:
                times.append(round(server.wait("/readyz"), 3))
            finally:
                server.stop()
        return times
    finally:
        moto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--rounds", type=int, default=5, help="load rounds per server (medians are reported)")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument(
        "--triton",
        action="store_true",
        help="also measure the service through a local Triton (gRPC and HTTP; needs scripts/triton-venv.sh)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeat for several): service (demo model: floor, service, v2 JSON and "
        "binary), heavy (17 MB MLP, batching off vs on), cold (cold start), durability (wal vs buffered)",
    )
    parser.add_argument(
        "--durability",
        action="store_true",
        help="also compare STORE_DURABILITY=wal with buffered (demo model, same load and rounds)",
    )
    parser.add_argument(
        "--spool-dir",
        type=Path,
        help="where the durability runs keep SPOOL_DIR (the write-ahead file); default: a temporary directory",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another version of the service package (e.g. a copy of service/ as of "
        "a commit): the heavy runs add it with BATCHING=on, in the same rounds",
    )
    parser.add_argument("--serve-floor", nargs=2, metavar=("PORT", "RESPONSE_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1], bare=args.bare)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.only:
        sections = tuple(name for name in SECTIONS if name in args.only)
    else:
        sections = ("service", "heavy", "cold", *(("durability",) if args.durability else ()))
    summary = run(
        args.warmup,
        args.duration,
        args.rounds,
        args.cold_runs,
        log,
        triton=args.triton,
        sections=sections,
        spool_dir=args.spool_dir,
        baseline=args.baseline,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key != "details":
                print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
