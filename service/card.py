"""The model card: what the service needs to know about a model besides its bytes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Dtype = Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "string"]

# Open Inference Protocol tensor datatypes, by numpy dtype name.
OIP_DATATYPES: dict[str, str] = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
    "string": "BYTES",
}


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    shape: list[int | None] = Field(min_length=1, description="-1 or null marks a dynamic dimension")
    dtype: Dtype
    range: tuple[float, float] | None = Field(
        default=None, description="inclusive [min, max] of every input value; requests outside it are refused"
    )

    @model_validator(mode="after")
    def _range_order(self) -> TensorSpec:
        if self.range is not None and not self.range[0] <= self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [min, max] with min <= max")
        return self

    @property
    def oip_shape(self) -> list[int]:
        return [-1 if d is None or d < 0 else d for d in self.shape]


class ModelCard(BaseModel):
    """``card.json`` beside the model (see ``service/README.md`` for bringing your own model)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    format: str = "onnx"
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    probabilities_output: str | None = None
    classes: list[int] | None = None
    accuracy: float | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        self.sha256 = self.sha256.lower()
        spec = self.inputs[0]
        if len(spec.shape) != 2 or spec.shape[1] is None or spec.shape[1] <= 0:
            raise ValueError("inputs[0].shape must be [-1, n_features] with a fixed n_features")
        if spec.dtype != "float32":
            raise ValueError("inputs[0].dtype must be float32")
        probs = self.probabilities_spec
        if len(probs.shape) != 2 or probs.dtype not in ("float32", "float64"):
            raise ValueError(f"output {probs.name!r} must be a float [-1, n_classes] tensor of probabilities")
        n_classes = probs.shape[1]
        if self.classes is not None and n_classes is not None and len(self.classes) != n_classes:
            raise ValueError(f"classes has {len(self.classes)} entries but {probs.name!r} has {n_classes}")
        return self

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def n_features(self) -> int:
        n = self.inputs[0].shape[1]
        assert n is not None
        return n

    @property
    def probabilities_spec(self) -> TensorSpec:
        if self.probabilities_output is not None:
            for out in self.outputs:
                if out.name == self.probabilities_output:
                    return out
            raise ValueError(f"probabilities_output {self.probabilities_output!r} is not among outputs")
        candidates = [o for o in self.outputs if len(o.shape) == 2 and o.dtype in ("float32", "float64")]
        if len(candidates) != 1:
            raise ValueError("set probabilities_output: the card has no single float [-1, n] output")
        return candidates[0]

    @property
    def n_classes(self) -> int | None:
        return self.probabilities_spec.shape[1]

    @property
    def short_version(self) -> str:
        return self.sha256[:12]


class CardError(ValueError):
    pass


def parse_card(raw: bytes) -> ModelCard:
    """Parse ``card.json`` bytes; raises :class:`CardError` with a readable reason."""
    try:
        return ModelCard.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'card'}: {err['msg']}" for err in exc.errors())
        raise CardError(f"invalid model card: {problems}") from None


def card_summary(card: ModelCard) -> dict[str, Any]:
    return {"name": card.name, "version": card.short_version, "sha256": card.sha256}
