"""Offline plan: run a stack's program under Pulumi's mock runtime and record what it registers.

No cloud credentials, network or Pulumi CLI are used. The program gets the stack's own
``Pulumi.<stack>.yaml`` config; values stored encrypted (``secure:``) cannot be decrypted here
and reach the program as the placeholder ``[secret]``, marked secret. Every secret value in
the recorded inputs and outputs is replaced by ``"[secret]"``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.output import Unknown
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

from stacks import stack_config
from stacks.stack_config import SECRET, StackConfigError

#: Private parts of the Pulumi Python SDK the mock-runtime plan relies on (with stacks/stages.py).
#: The SDK is pinned exactly (pyproject.toml) for this reason; tests/environment/test_versions.py
#: checks every one of them against the installed SDK and names the ones an upgrade broke.
#:
#:   pulumi.output.Unknown                    marker of an unknown value in deserialised inputs
#:   pulumi.runtime.rpc.UNKNOWN / is_rpc_secret / deserialize_properties / serialize_properties
#:                                            the wire encoding of inputs, secrets and unknowns
#:   pulumi.runtime.mocks.MockMonitor         subclassed: records RegisterResource(Outputs) calls
#:   pulumi.runtime.set_mocks(monitor=)       installs that monitor instead of a fresh one
#:   pulumi.runtime.stack.run_in_stack        runs the program inside a root stack resource
#:   pulumi.runtime.sync_await._sync_await    drives the program's event loop to completion
#:   pulumi.runtime.settings.set_root_resource  drops the root stack set_mocks registers
#:   pulumi.resource.register_resource        wrapped to record the construction order
#:   pulumi.runtime.config.CONFIG / get_config_env / is_config_secret   the config map (stages.py)
SDK_INTERNALS: tuple[str, ...] = (
    "pulumi.output.Unknown",
    "pulumi.runtime.rpc.UNKNOWN",
    "pulumi.runtime.rpc.is_rpc_secret",
    "pulumi.runtime.rpc.deserialize_properties",
    "pulumi.runtime.rpc.serialize_properties",
    "pulumi.runtime.mocks.MockMonitor.RegisterResource",
    "pulumi.runtime.mocks.MockMonitor.RegisterResourceOutputs",
    "pulumi.runtime.set_mocks",
    "pulumi.runtime.stack.run_in_stack",
    "pulumi.runtime.sync_await._sync_await",
    "pulumi.runtime.settings.set_root_resource",
    "pulumi.resource.register_resource",
    "pulumi.runtime.config.CONFIG",
    "pulumi.runtime.config.get_config_env",
    "pulumi.runtime.config.is_config_secret",
)



def missing_sdk_internals(names: tuple[str, ...] = SDK_INTERNALS) -> list[str]:
    """The dotted names of ``names`` the installed Pulumi SDK does not have (or not in the shape used)."""
    import importlib
    import inspect

    missing = []
    for name in names:
        parts = name.split(".")
        target: Any = None
        for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
            try:
                target = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attr in parts[split:]:
                    target = getattr(target, attr)
            except AttributeError:
                target = None
            break
        if target is None:
            missing.append(name)
    shapes = {"pulumi.runtime.set_mocks": ("monitor",), "pulumi.resource.register_resource": ("res", "ty", "name")}
    for name, params in shapes.items():
        if name in names and name not in missing:
            module, _, attr = name.rpartition(".")
            signature = inspect.signature(getattr(importlib.import_module(module), attr))
            if not set(params) <= set(signature.parameters):
                missing.append(f"{name}({', '.join(params)})")
    return missing


COMPUTED = "[computed]"
STACK_TYPE = "pulumi:pulumi:Stack"


class PlanError(Exception):
    """The plan could not be made (unknown stack, invalid config, failing program)."""


@dataclass(frozen=True)
class PlannedResource:
    urn: str
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool
    #: URNs this resource waits for: explicit ``depends_on`` and the resources its inputs reference
    #: (a component stands for its children), as the engine orders creation.
    dependencies: tuple[str, ...] = ()
    #: ``protect``-ed: the engine refuses to delete or replace it.
    protect: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"urn": self.urn, "type": self.type, "name": self.name, "parent": self.parent,
                "dependencies": list(self.dependencies), "inputs": self.inputs}


@dataclass
class Plan:
    stack: str
    project: str
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def stack_urn(self) -> str:
        return f"urn:pulumi:{self.stack}::{self.project}::{STACK_TYPE}::{self.project}-{self.stack}"

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "project": self.project,
            "resources": [r.to_json() for r in self.resources],
            "outputs": self.outputs,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False)


def redact(value: Any) -> Any:
    """Replace secrets by ``[secret]`` and unknowns by ``[computed]``, recursively."""
    if rpc.is_rpc_secret(value):
        return SECRET
    if isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN):
        return COMPUTED
    if isinstance(value, float) and value.is_integer():
        return int(value)  # protobuf carries every number as a double
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, pulumi.Asset | pulumi.Archive):
        return {"asset": getattr(value, "path", None) or getattr(value, "uri", None) or "[inline]"}
    return value


#: The data sources the programs read, and the result fields they use.
_INVOKE_RESULTS: dict[str, tuple[str, ...]] = {
    "yandex:index/getClientConfig:getClientConfig": ("cloudId", "folderId", "zone", "iamToken"),
}

#: Output-only values nested inside input blocks, unknown until the cloud creates the resource.
_NESTED_COMPUTED: dict[str, tuple[tuple[str, str], ...]] = {
    "VpcAddress": (("externalIpv4Address", "address"),),
}


@functools.cache
def _output_names(token: str) -> frozenset[str]:
    """Top-level output properties of a provider resource type (camelCase), from the SDK class."""
    from components.yc import PACKAGE, yandex

    if not token.startswith(f"{PACKAGE}:"):
        return frozenset()
    cls = getattr(yandex, token.rpartition(":")[2], None)
    names = (getattr(v.fget, "_pulumi_name", None) for v in vars(cls).values() if isinstance(v, property)) \
        if cls is not None else ()
    return frozenset(n for n in names if n)


#: What the cloud would answer, by type token (``random:index/randomPassword:RandomPassword``) or
#: data source token (``yandex:index/getKubernetesCluster:getKubernetesCluster``): property -> value.
MockOutputs = Mapping[str, Mapping[str, Any]]


class _Mocks(pulumi.runtime.Mocks):
    """Returns the inputs as state and every output-only property as unknown, as a preview sees
    them; ids are readable placeholders so references between resources stay visible. ``outputs``
    stand in for what the cloud would compute (a generated password, a data source's answer)."""

    def __init__(self, outputs: MockOutputs | None = None) -> None:
        self.outputs = dict(outputs or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        for name in _output_names(args.typ):
            state.setdefault(name, rpc.UNKNOWN)
        for block, field_name in _NESTED_COMPUTED.get(args.typ.rpartition(":")[2], ()):
            if isinstance(state.get(block), dict):
                state[block] = {**state[block], field_name: rpc.UNKNOWN}
        state.update(self.outputs.get(args.typ, {}))
        return f"({args.name}.id)", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        """Data sources answer with readable placeholders (``(getClientConfig.iamToken)``), as ids do."""
        function = args.token.rpartition(":")[2]
        answer: dict[str, Any] = {name: f"({function}.{name})" for name in _INVOKE_RESULTS.get(args.token, ())}
        answer.update(self.outputs.get(args.token, {}))
        return answer, []


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, plan: Plan, root: Path, outputs: MockOutputs | None = None) -> None:
        super().__init__(_Mocks(outputs))
        self.plan = plan
        self.root = f"{root}/"

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.additionalSecretOutputs:
            response = _with_secret_outputs(request, response)
        if request.type != STACK_TYPE:
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            self.plan.resources.append(PlannedResource(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent if request.parent and request.parent != self.plan.stack_urn else None,
                inputs=_relative_paths(redact(_drop_none(inputs)), self.root),
                custom=bool(request.custom),
                dependencies=tuple(sorted(set(request.dependencies))),
                protect=bool(request.protect),
            ))
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if request.urn == self.plan.stack_urn:
            outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
            self.plan.outputs = {k: COMPUTED if v is None else redact(v) for k, v in sorted(outputs.items())}
        return super().RegisterResourceOutputs(request)


def _with_secret_outputs(request: Any, response: Any) -> Any:
    """Mark the resource's ``additionalSecretOutputs`` secret in the response, as the engine does (the
    SDK's mock monitor does not). Each becomes a readable placeholder, ``(<name>.<property>)``: this
    SDK serialises an unknown value without its secret marker, so a secret output that stayed
    unknown would reach the resources using it as a plain ``[computed]``. A value the mocks did
    give is kept, as a secret."""
    state = rpc.deserialize_properties(response.object, keep_unknowns=True)
    for prop in request.additionalSecretOutputs:
        value = state.get(prop)
        known = value is not None and not isinstance(value, Unknown) and value != rpc.UNKNOWN
        state[prop] = pulumi.Output.secret(value if known else f"({request.name}.{prop})")
    response.object.CopyFrom(_sync_await(rpc.serialize_properties(state, {})))
    return response


def _relative_paths(value: Any, root: str) -> Any:
    """Local file paths (uploaded objects) relative to the project, so plans compare across checkouts."""
    if isinstance(value, str) and value.startswith(root):
        return value[len(root):]
    if isinstance(value, dict):
        return {k: _relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, root) for v in value]
    return value


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``Pulumi.yaml`` (this one or the nearest parent)."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "Pulumi.yaml").is_file():
            return directory
    raise PlanError(f"no Pulumi.yaml in {here} or its parents: run stagectl from the project directory")


def load_stack_config(root: Path, stack: str) -> tuple[str, dict[str, str], list[str]]:
    """Project name, the flat config map as the engine passes it, and the secret keys
    (:func:`stacks.stack_config.load_stack_config`; an unknown stack is a :class:`PlanError`)."""
    try:
        return stack_config.load_stack_config(root, stack)
    except StackConfigError as exc:
        raise PlanError(str(exc)) from None


def run_plan(stack: str, root: Path | None = None, preview: bool = True) -> Plan:
    """Run ``stack``'s program under the mock runtime and return what it registered
    (``preview=False``: as ``pulumi up`` runs it, with the checks a deployment makes)."""
    from stacks import stages

    root = project_root(root)
    project, config, secret_keys = load_stack_config(root, stack)
    return record(project, stack, config, secret_keys,
                  lambda: stages.run(stack, config, root=root), root=root, preview=preview)


def record(project: str, stack: str, config: dict[str, str], secret_keys: list[str],
           program: Callable[[], object], root: Path, preview: bool = True,
           outputs: MockOutputs | None = None) -> Plan:
    """Run ``program`` under the mock runtime with the given config; return what it registered.

    ``preview=False`` runs it as ``pulumi up`` would (``pulumi.runtime.is_dry_run()`` is false);
    ``outputs`` are what the cloud would answer, per type (:data:`MockOutputs`).
    """
    from components.base import ValidationError
    from stacks.config import ConfigError

    plan = Plan(stack=stack, project=project)
    _ensure_event_loop()
    monitor = _RecordingMonitor(plan, root, outputs)
    pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=preview, monitor=monitor,
                             logger=_plan_logger(plan.warnings))
    pulumi.runtime.set_all_config(config, secret_keys)
    # set_mocks registers a finished root stack of its own; run the program in a fresh one so
    # its exports are recorded as the stack's outputs, as under the real engine.
    pulumi.runtime.settings.set_root_resource(None)  # type: ignore[arg-type]
    try:
        with _construction_order() as order:
            _sync_await(run_in_stack(lambda: _discard(program())))
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    except ValidationError as exc:
        raise PlanError(f"invalid setting: {exc}") from None
    except Exception as exc:  # a component's ValidationError, or a program bug
        raise PlanError(f"{type(exc).__name__}: {exc}") from exc
    # The engine sees resources as their inputs resolve, which varies between runs; the plan
    # lists them in the order the program constructed them, which does not.
    rank = {key: i for i, key in enumerate(order)}
    plan.resources.sort(key=lambda r: rank.get((r.type, r.name), len(rank)))
    return plan


def _discard(_: object) -> None:
    return None


def _ensure_event_loop() -> None:
    """The SDK runs the program on the thread's current event loop; ``asyncio.run`` (used by whatever ran
    before in this process) leaves none behind."""
    import asyncio

    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


@contextlib.contextmanager
def _construction_order() -> Iterator[list[tuple[str, str]]]:
    """Record (type, name) of each resource as its constructor registers it, synchronously."""
    import pulumi.resource as resource_module

    order: list[tuple[str, str]] = []
    original = resource_module.register_resource

    def recording(res: Any, ty: str, name: str, *args: Any, **kwargs: Any) -> Any:
        order.append((ty, name))
        return original(res, ty, name, *args, **kwargs)

    resource_module.register_resource = recording
    try:
        yield order
    finally:
        resource_module.register_resource = original


class _WarningSink(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _plan_logger(sink: list[str]) -> logging.Logger:
    logger = logging.getLogger(f"stagectl.plan.{id(sink)}")
    logger.propagate = False
    logger.handlers = [_WarningSink(sink)]
    return logger
