"""``stagectl model build``: the demo model the inference service ships with.

Trains a small, deterministic classifier (standard scaler + MLP) on scikit-learn's bundled digits
data set (8x8 images flattened to 64 floats, 10 classes; nothing is downloaded), exports it to ONNX
with skl2onnx (no ZipMap, so the probabilities come out as a plain ``float32 [N, 10]`` tensor) and
writes a model card beside it. The service needs only ONNX Runtime and the card at run time.

**The release is committed**: ``models/digits/`` holds the released ``model.onnx``, its card and
its golden input, and every stack pins that file's sha256 (``release.modelSha256``). A model is an
artifact: it is built once, reviewed and pinned, and deploys ship that very file; they never
retrain. ``stagectl model build`` rebuilds it (into ``build/models/digits`` by default) and checks
the rebuild against the release, bit for bit. Rebuilds usually reproduce it, because nearly everything that
decides the bytes is fixed (the memory alignment of small arrays, which follows the process's
environment and paths, can still change the last bits): the data split and seeds below, the library versions
(``requirements/dev.txt``), and the floating-point kernels of OpenBLAS, whose results differ in
the last bits between CPU generations (AVX2 vs AVX-512 gemm kernels give two different models from
the same code and versions): training runs in a fresh interpreter with OpenBLAS forced to its
Haswell (AVX2) kernels on one thread, which every x86-64 CPU of the last decade runs. Elsewhere (an
ARM laptop, a CPU without AVX2) the rebuild can differ in its bytes; the check then compares what
the two models answer on the held-out split and says so. ``--out models/digits`` makes a new release.

The card is the contract between a model and the service (see ``service/README.md``)::

    {
      "name": "digits-mlp",
      "version": "<first 12 hex chars of sha256>",
      "sha256": "<sha256 of model.onnx>",
      "format": "onnx",
      "inputs":  [{"name": "float_input", "shape": [-1, 64], "dtype": "float32", "range": [0.0, 16.0]}],
      "outputs": [{"name": "label", "shape": [-1], "dtype": "int64"},
                  {"name": "probabilities", "shape": [-1, 10], "dtype": "float32"}],
      "probabilities_output": "probabilities",
      "classes": [0, 1, ..., 9],
      "accuracy": 0.97,
      ...
    }
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "digits-mlp"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
#: The released model (committed; the stacks pin its sha256) and where rebuilds go by default.
RELEASE_DIR = Path("models") / "digits"
BUILD_DIR = Path("build") / "models" / "digits"
INPUT_NAME = "float_input"
SEED = 0
TEST_SIZE = 0.25
# Opsets old enough for every ONNX Runtime the service accepts (service/requirements/*.txt).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic train/held-out split: ``(x_train, x_test, y_train, y_test)``, float32 inputs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    return x_train, x_test, y_train, y_test


def held_out_sample(index: int = 0) -> tuple[list[float], int]:
    """One real digit from the held-out split (64 pixel intensities) and its true label."""
    _, x_test, _, y_test = digits_split()
    return [float(v) for v in x_test[index]], int(y_test[index])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _train() -> tuple[Any, float, int, int]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = digits_split()
    clf = MLPClassifier(
        hidden_layer_sizes=(64,),
        max_iter=400,
        random_state=SEED,
        tol=1e-5,
        n_iter_no_change=20,
    )
    pipeline = make_pipeline(StandardScaler(), clf)
    pipeline.fit(x_train, y_train)
    accuracy = float((pipeline.predict(x_test) == y_test).mean())
    return pipeline, accuracy, len(x_train), len(x_test)


def _export(pipeline: Any, path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        pipeline,
        name=MODEL_NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    path.write_bytes(onx.SerializeToString())


def _check_onnx(path: Path, pipeline: Any) -> None:
    """The exported graph must agree with scikit-learn on the held-out split."""
    import onnxruntime as ort

    _, x_test, _, _ = digits_split()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {INPUT_NAME: x_test})
    expected = pipeline.predict_proba(x_test)
    if not np.array_equal(labels, pipeline.predict(x_test)) or not np.allclose(probabilities, expected, atol=1e-4):
        raise RuntimeError(f"ONNX export of {MODEL_NAME} disagrees with scikit-learn")


#: OpenBLAS kernels that training is pinned to on x86-64 (see the module docstring)
BLAS_CORETYPE = "Haswell"


def _cpu_has_avx2() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def training_environment() -> dict[str, str]:
    """The environment of the training interpreter: one BLAS/OpenMP thread, and OpenBLAS's Haswell
    kernels where the CPU runs them."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OPENBLAS_CORETYPE", None)
    if _cpu_has_avx2():
        env["OPENBLAS_CORETYPE"] = BLAS_CORETYPE
    return env


class ModelBuildError(Exception):
    """The build could not run (a library missing) or failed its own checks."""


def build_demo_model(out_dir: Path) -> dict[str, Any]:
    """Train, export and describe the demo model in a fresh interpreter with the pinned numeric
    environment; writes ``model.onnx``, ``card.json``, ``golden.json`` and the Triton layout into
    ``out_dir`` and returns the card."""
    out_dir = Path(out_dir).resolve()
    result = subprocess.run([sys.executable, "-m", "stagectl.model", str(out_dir)], env=training_environment(),
                            capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    if result.returncode != 0:
        raise ModelBuildError(result.stderr.strip().splitlines()[-1] if result.stderr.strip()
                              else f"the model build exited with status {result.returncode}")
    card: dict[str, Any] = json.loads((out_dir / CARD_FILE).read_text(encoding="utf-8"))
    return card


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info

        kinds = sorted({f"{i.get('internal_api')} {i.get('architecture') or ''}".strip()
                        for i in threadpool_info() if i.get("user_api") == "blas"})
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        kinds = []
    return (", ".join(kinds) or "unknown") + ", 1 thread"


def _build_here(out_dir: Path) -> dict[str, Any]:
    """The build itself (runs in the interpreter :func:`build_demo_model` starts)."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline, accuracy, n_train, n_test = _train()
    model_path = out_dir / MODEL_FILE
    tmp_path = out_dir / (MODEL_FILE + ".tmp")
    _export(pipeline, tmp_path)
    _check_onnx(tmp_path, pipeline)
    tmp_path.replace(model_path)
    sha256 = sha256_file(model_path)
    classes = [int(c) for c in pipeline.classes_]
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": sha256[:12],
        "sha256": sha256,
        "format": "onnx",
        "description": "StandardScaler + MLP(64) on scikit-learn's digits (8x8 grey levels 0..16, flattened)",
        "inputs": [{"name": INPUT_NAME, "shape": [-1, 64], "dtype": "float32", "range": [0.0, 16.0]}],
        "outputs": [
            {"name": "label", "shape": [-1], "dtype": "int64"},
            {"name": "probabilities", "shape": [-1, len(classes)], "dtype": "float32"},
        ],
        "probabilities_output": "probabilities",
        "classes": classes,
        "accuracy": round(accuracy, 4),
        "evaluation": {
            "dataset": "sklearn.datasets.load_digits",
            "split": f"stratified hold-out, test_size={TEST_SIZE}, random_state={SEED}",
            "train_samples": n_train,
            "test_samples": n_test,
        },
        "size_bytes": model_path.stat().st_size,
        "built_with": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": TARGET_OPSET[""],
            "blas": _blas_description(),
        },
    }
    card_tmp = out_dir / (CARD_FILE + ".tmp")
    card_tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    card_tmp.replace(out_dir / CARD_FILE)
    write_golden(out_dir, card)
    from components.triton_repo import write_layout

    write_layout(out_dir)  # the Triton model repository (partner) next to the ONNX file
    return card


GOLDEN_FILE = "golden.json"
GOLDEN_ROWS = 8


def write_golden(out_dir: Path, card: dict[str, Any]) -> Path:
    """The promotion smoke test's input: held-out rows and the labels this very model gives them."""
    import onnxruntime

    _, x_test, _, y_test = digits_split()
    rows = x_test[:GOLDEN_ROWS]
    session = onnxruntime.InferenceSession(str(out_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([card["probabilities_output"]], {card["inputs"][0]["name"]: rows})
    golden = {"model_sha256": card["sha256"], "instances": rows.tolist(),
              "labels": [int(i) for i in np.argmax(probabilities, axis=1)],
              # the data set's own labels of those rows (the demo shows them; promotion gates on "labels")
              "targets": [int(t) for t in y_test[:GOLDEN_ROWS]]}
    path = out_dir / GOLDEN_FILE
    path.write_text(json.dumps(golden) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Comparison:
    """A rebuilt model against the released one."""

    released_sha256: str
    rebuilt_sha256: str
    #: held-out rows on which both give the same label, of how many
    same_labels: int
    rows: int
    #: the largest difference between their probabilities on the held-out split
    max_probability_delta: float

    @property
    def identical(self) -> bool:
        return self.released_sha256 == self.rebuilt_sha256


def compare_models(released: Path, rebuilt: Path) -> Comparison:
    """What two model directories hold, compared by bytes and by their answers on the held-out split."""
    import onnxruntime as ort

    def run(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        card = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        rows = np.asarray(json.loads((model_dir / GOLDEN_FILE).read_text(encoding="utf-8"))["instances"],
                          dtype=np.float32)
        (probabilities,) = session.run([card["probabilities_output"]], {card["inputs"][0]["name"]: rows})
        return np.argmax(probabilities, axis=1), probabilities

    labels_a, probs_a = run(released)
    labels_b, probs_b = run(rebuilt)
    return Comparison(
        released_sha256=sha256_file(released / MODEL_FILE),
        rebuilt_sha256=sha256_file(rebuilt / MODEL_FILE),
        same_labels=int((labels_a == labels_b).sum()),
        rows=len(labels_a),
        max_probability_delta=float(np.abs(probs_a - probs_b).max()),
    )


def _describe_difference(comparison: Comparison, released: Path, rebuilt: Path) -> str:
    cards = [json.loads((d / CARD_FILE).read_text(encoding="utf-8")).get("built_with", {}) for d in (released, rebuilt)]
    changed = [f"{k}: {cards[0].get(k)} -> {cards[1].get(k)}" for k in sorted(set(cards[0]) | set(cards[1]))
               if cards[0].get(k) != cards[1].get(k)]
    return (f"the rebuild differs from the release {released / MODEL_FILE}: sha256 "
            f"{comparison.released_sha256} (released) vs {comparison.rebuilt_sha256} (rebuilt); "
            f"on the golden rows {comparison.same_labels}/{comparison.rows} labels agree, probabilities differ "
            f"by at most {comparison.max_probability_delta:.2e}; built with: "
            + ("; ".join(changed) or "the same libraries and kernels (another CPU or platform)"))


def _cmd_build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    release = Path(args.release)
    try:
        card = build_demo_model(out)
    except ModelBuildError as exc:
        print(f"stagectl model build: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(card, indent=2))
    print(f"wrote {out / MODEL_FILE}, {CARD_FILE}, {GOLDEN_FILE} and the Triton layout", file=sys.stderr)
    status = 0
    if out.resolve() == release.resolve():
        print(f"new release in {release}: pin release.modelSha256: {card['sha256']} in every Pulumi.<stack>.yaml",
              file=sys.stderr)
    elif not (release / MODEL_FILE).is_file():
        print(f"no released model in {release} to compare with", file=sys.stderr)
    else:
        comparison = compare_models(release, out)
        if comparison.identical:
            print(f"the rebuild reproduces the release {release / MODEL_FILE} bit for bit "
                  f"(sha256 {comparison.rebuilt_sha256})", file=sys.stderr)
        else:
            print(f"stagectl model build: {_describe_difference(comparison, release, out)}", file=sys.stderr)
            status = 1
    if args.no_tf:
        return status
    from stagectl.tf_export import write_tf_artifact

    # the TensorFlow SavedModel for TF Serving (prod), checked against ONNX Runtime on the held-out split
    return write_tf_artifact(out, check_x=digits_split()[1]) or status


def _cmd_usage(parser: argparse.ArgumentParser) -> Any:
    def handler(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def add_commands(subparsers: Any) -> None:
    """Register ``stagectl model build [--out DIR]`` on the top-level ``stagectl`` sub-parsers."""
    model = subparsers.add_parser("model", help="build the demo model and its card")
    model.set_defaults(func=_cmd_usage(model))
    actions = model.add_subparsers(dest="model_action", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="rebuild the digits demo model and check it against the release",
        description="Train the deterministic digits demo model (scikit-learn), export it to ONNX without "
        "ZipMap, write model.onnx, card.json, golden.json and the Triton layout into DIR, and compare the "
        f"result with the released model in {RELEASE_DIR} (exit 1 if it differs). --out {RELEASE_DIR} "
        "makes a new release instead.",
    )
    build.add_argument(
        "--out",
        default=str(BUILD_DIR),
        metavar="DIR",
        help=f"output directory (default: {BUILD_DIR}, relative to the current directory)",
    )
    build.add_argument("--release", default=str(RELEASE_DIR), metavar="DIR",
                       help=f"the released model to compare with (default: {RELEASE_DIR})")
    build.add_argument("--no-tf", action="store_true", help="do not write the TensorFlow SavedModel (tf/<version>/)")
    build.set_defaults(func=_cmd_build)
    from stagectl import model_publish, tf_export

    tf_export.add_command(actions)
    model_publish.add_command(actions)


def _main(argv: list[str]) -> int:
    """``python -m stagectl.model OUT_DIR``: the build in this interpreter (see :func:`build_demo_model`)."""
    if len(argv) != 1:
        print("usage: python -m stagectl.model OUT_DIR", file=sys.stderr)
        return 2
    try:
        _build_here(Path(argv[0]))
    except ImportError as exc:
        print(f"{exc.name or exc} is not installed: the model build needs the model extra "
              "(make venv-dev installs it from requirements/dev.txt)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
