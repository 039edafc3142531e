"""Fixtures of the delivery tests: the released model served by a real local service, and a copy of
the project's stack files in which mvp pins that release."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stagectl.model import CARD_FILE, GOLDEN_FILE, MODEL_FILE, RELEASE_DIR
from tests.service.helpers import ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "5e" * 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released demo model, its card and its golden input (labelled by the model itself)."""
    out = tmp_path_factory.mktemp("model") / "digits"
    out.mkdir()
    for name in (MODEL_FILE, CARD_FILE, GOLDEN_FILE):
        shutil.copy(ROOT / RELEASE_DIR / name, out / name)
    return out


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service(tmp_path_factory.mktemp("svc"), MODEL_URI=str(model_dir / "model.onnx"))
    yield svc
    svc.stop()


#: A release's flavour of the image for each stage (what deploy:mvp records in release.images).
FLAVOURS = {"mvp": DIGEST, "partner": "sha256:" + "6a" * 32, "prod": "sha256:" + "7b" * 32}


def project_with_release(tmp_path: Path, model_dir: Path, digest: str = DIGEST,
                         images: dict[str, str] | None = None) -> Path:
    """A copy of the project's stack files and prod overlay in which mvp pins ``digest`` and the served
    model, and the later stages an older release. ``images``: the release's flavours, recorded in mvp's
    release.images as deploy:mvp's `pulumi config set --path` does (``digest`` is mvp's)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Pulumi.yaml", "Pulumi.mvp.yaml", "Pulumi.partner.yaml", "Pulumi.prod.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copytree(model_dir, tmp_path / "models" / "digits")
    sha = hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()
    mvp = tmp_path / "Pulumi.mvp.yaml"
    text = mvp.read_text()
    old = yaml.safe_load(text)["config"]["aistack:release"]
    text = text.replace(old["imageDigest"], digest).replace(old["modelSha256"], sha)
    if images is not None:
        assert images.get("mvp") == digest, "mvp runs its own flavour"
        pin = f'    modelSha256: "{sha}"\n'
        assert text.count(pin) == 1
        flavours = "".join(f"      {stage}: {flavour}\n" for stage, flavour in images.items())
        text = text.replace(pin, pin + "    images:\n" + flavours)
    mvp.write_text(text)
    for stage in ("partner", "prod"):  # the targets still pin an older release
        path = tmp_path / f"Pulumi.{stage}.yaml"
        pins = yaml.safe_load(path.read_text())["config"]["aistack:release"]
        path.write_text(path.read_text().replace(pins["modelSha256"], "0" * 64))
    return tmp_path


@pytest.fixture
def project(tmp_path: Path, model_dir: Path) -> Path:
    return project_with_release(tmp_path, model_dir)
