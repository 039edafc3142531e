"""Fixtures of the service tests: the demo model (built once), a moto S3 server, service processes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.helpers import MotoS3, ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released demo model (``models/digits``, what every stack pins and ships) with its Triton
    layout derived as ``stagectl model build`` and publish derive it."""
    from components.triton_repo import write_layout
    from stagectl.model import CARD_FILE, GOLDEN_FILE, MODEL_FILE, RELEASE_DIR

    out = tmp_path_factory.mktemp("demo-model") / "digits"
    out.mkdir()
    for name in (MODEL_FILE, CARD_FILE, GOLDEN_FILE):
        shutil.copy(ROOT / RELEASE_DIR / name, out / name)
    write_layout(out)
    return out


@pytest.fixture(scope="session")
def rebuilt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model rebuilt from scratch by the real ``stagectl model build`` code, once per session."""
    from stagectl.model import build_demo_model

    out = tmp_path_factory.mktemp("rebuilt-model") / "digits"
    build_demo_model(out)
    return out


@pytest.fixture(scope="session")
def digits() -> tuple[Any, Any]:
    """The held-out split of the digits data: ``(x_test float32, y_test)``."""
    from stagectl.model import digits_split

    _, x_test, _, y_test = digits_split()
    return x_test, y_test


@pytest.fixture
def model_copy(demo_model: Path, tmp_path: Path) -> Path:
    """A private copy of the demo model directory that a test may tamper with."""
    target = tmp_path / "model"
    shutil.copytree(demo_model, target)
    return target


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One ``python -m service`` on the demo model, shared by a module's HTTP tests."""
    svc = start_service(tmp_path_factory.mktemp("service"), MODEL_URI=str(demo_model / "model.onnx"))
    yield svc
    assert svc.stop() == 0, svc.log_tail()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Any]:
    """A factory of service processes with custom settings, all stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def factory(wait: bool = True, **env: str) -> ServiceProcess:
        svc = start_service(tmp_path / f"svc{len(started)}", wait=wait, **env)
        started.append(svc)
        return svc

    yield factory
    for svc in started:
        svc.stop()


@pytest.fixture(scope="module")
def reference(demo_model: Path) -> Any:
    """ONNX Runtime on the demo model, one thread: what the service's answers are compared with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(demo_model / "model.onnx"), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def card(demo_model: Path) -> dict[str, Any]:
    """The demo model's card."""
    return dict(json.loads((demo_model / "card.json").read_text()))
