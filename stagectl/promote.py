"""``stagectl promote FROM TO``: move a release (image digests + model sha256) to the next stage.

A release is what ``aistack:release`` pins in a stack file: one commit's build of the service
image in one flavour per stage (``images``: stage -> digest, service/Dockerfile's ``STAGE``), the
stage's own flavour as ``imageDigest``, and the model. Promotion writes the release into the
target stack file with the target's flavour as ``imageDigest`` and the ``images`` mapping carried
as it is, editing only those values (comments, order and everything else stay as they were), and
for ``prod`` also the image digest of ``deploy/``'s prod overlay (prod's flavour), which ArgoCD
syncs. A release recorded before the build made one image per stage has no ``images``: the target
then gets the source's ``imageDigest`` (the one image), with a note saying so. It refuses, with a
reason, unless every gate passes:

1. order: only to the next stage (mvp -> partner -> prod) unless ``--force``;
2. pinned: the source pins the image by digest (every flavour too, its own being ``imageDigest``,
   the target's being there) and the model by sha256;
3. smoke test: the source stage's endpoint answers the golden input with the expected labels and
   serves the pinned model version;
4. target: the target stack, with the new pins, passes every guardrail and its budget.

Each stage runs the image from its own Container Registry (its workloads hold the pull grant on
that one only), so promotion also **copies the image by digest** from the source stage's
repository to the target's (``skopeo copy --preserve-digests``: the target refuses a copy whose
digest would change), tags it ``release-<12 hex of the digest>`` so lifecycle policies keep it,
and checks that the target serves that digest. It copies the target's flavour and those of the
stages after it (partner's registry holds prod's flavour for the partner -> prod promotion,
which copies from there). The repositories are the stacks' ``image_repository`` outputs unless
given. For ``prod`` the overlay's image ``newName`` becomes the target repository. Nothing is
written unless every gate and the copy succeed.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

STAGE_ORDER = ("mvp", "partner", "prod")
PIN_KEYS = ("imageDigest", "modelSha256", "modelVersion")
#: The release's flavour of the image for each stage: ``{mvp: sha256:..., partner: ..., prod: ...}``.
IMAGES_KEY = "images"
RELEASE_KEY = "aistack:release"
OVERLAY = Path("deploy") / "overlays" / "prod" / "kustomization.yaml"
SERVICE_IMAGE = "inference"
#: The stack output holding each stage's service endpoint.
ENDPOINT_OUTPUTS = {"mvp": "invoke_url", "partner": "service_url", "prod": "service_url"}
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PromotionRefused(Exception):
    """A gate refused the promotion; the message says which and why."""


@dataclass(frozen=True)
class ImageCopy:
    """The release's image goes from ``source`` to ``target`` (``<registry host>/<path>/<repository>``,
    e.g. ``cr.yandex/<registry id>/inference``); None for either: the stack's ``image_repository``."""

    source: str | None = None
    target: str | None = None
    tls_verify: bool = True


def release_tag(digest: str) -> str:
    """The tag a copied release carries in the target registry (untagged images may be collected)."""
    return "release-" + digest.removeprefix("sha256:")[:12]


def copy_image(source: str, target: str, digest: str, tls_verify: bool = True,
               runner: Callable[[Sequence[str]], subprocess.CompletedProcess[bytes]] | None = None,
               flavour: str | None = None) -> str:
    """Copy ``source@digest`` to ``target`` (tag :func:`release_tag`), keeping the digest; return the gate
    line, which names ``flavour`` (the stage whose flavour of the image it is) when given."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise PromotionRefused("skopeo is not installed, and the image must be copied to the target stage's "
                               "registry: apt-get install skopeo (or pass --no-copy-image if it is there already)")

    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        if runner is not None:
            return runner(cmd)
        return subprocess.run(list(cmd), capture_output=True, timeout=1800)

    verify = "true" if tls_verify else "false"
    copied = run([skopeo, "copy", "--preserve-digests", "--retry-times", "3", f"--src-tls-verify={verify}",
                  f"--dest-tls-verify={verify}", f"docker://{source}@{digest}",
                  f"docker://{target}:{release_tag(digest)}"])
    if copied.returncode != 0:
        raise PromotionRefused(f"copying {_what(flavour)} {source}@{digest} to {target} failed: "
                               f"{copied.stderr.decode(errors='replace').strip()[-600:]}")
    inspected = run([skopeo, "inspect", "--raw", f"--tls-verify={verify}", f"docker://{target}@{digest}"])
    served = "sha256:" + hashlib.sha256(inspected.stdout).hexdigest() if inspected.returncode == 0 else None
    if served != digest:
        raise PromotionRefused(f"after the copy {target} does not serve {digest} (got {served or 'nothing'}): the "
                               "target stage could not pull the release")
    named = f"{flavour} flavour " if flavour else ""
    return f"image: {named}{digest[:19]}... copied to {target} (tag {release_tag(digest)}), digest unchanged"


def _what(flavour: str | None) -> str:
    return f"the {flavour} flavour of the image" if flavour else "the image"


@dataclass
class Promotion:
    source: str
    target: str
    #: What the target stack file gets (its ``imageDigest`` is the target's flavour).
    pins: dict[str, str]
    #: The release's flavours (stage -> digest), carried as they are; None: a release without them.
    images: dict[str, str] | None = None
    changes: dict[Path, tuple[str, str]] = field(default_factory=dict)  # path -> (before, after)
    gates: list[str] = field(default_factory=list)
    #: What the operator should know that is no gate (printed as ``note``).
    notes: list[str] = field(default_factory=list)

    def diff(self, root: Path) -> str:
        out: list[str] = []
        for path, (before, after) in self.changes.items():
            rel = path.relative_to(root)
            out += difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{rel}", f"b/{rel}")
        return "".join(out)


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: keeps comments, order and quoting
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _load(path: Path) -> Any:
    return _yaml().load(path.read_text())


def _dump(document: Any) -> str:
    stream = io.StringIO()
    _yaml().dump(document, stream)
    return stream.getvalue()


def _release(root: Path, stack: str) -> Mapping[str, Any]:
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise PromotionRefused(f"no {path.name}: known stages are {', '.join(STAGE_ORDER)}")
    release = ((_load(path) or {}).get("config") or {}).get(RELEASE_KEY) or {}
    if not isinstance(release, Mapping):
        raise PromotionRefused(f"{path.name}: {RELEASE_KEY} is not a mapping")
    return release


def read_pins(root: Path, stack: str) -> dict[str, str]:
    path = root / f"Pulumi.{stack}.yaml"
    release = _release(root, stack)
    pins = {k: str(release[k]) for k in PIN_KEYS if release.get(k) is not None}
    if "imageDigest" not in pins or "modelSha256" not in pins:
        raise PromotionRefused(f"{path.name} has no complete release: set {RELEASE_KEY}.imageDigest and .modelSha256")
    return pins


def read_images(root: Path, stack: str) -> dict[str, str] | None:
    """The release's flavour of the image for each stage (``release.images``), in stage order; None
    when the release has none (recorded before the build made one image per stage)."""
    images = _release(root, stack).get(IMAGES_KEY)
    if images is None:
        return None
    if not isinstance(images, Mapping):
        raise PromotionRefused(f"Pulumi.{stack}.yaml: {RELEASE_KEY}.{IMAGES_KEY} is not a mapping of stage -> "
                               f"digest ({images!r})")
    unknown = sorted(str(stage) for stage in images if stage not in STAGE_ORDER)
    if unknown:
        raise PromotionRefused(f"Pulumi.{stack}.yaml: {RELEASE_KEY}.{IMAGES_KEY} names {', '.join(unknown)}, which "
                               f"is not a stage ({', '.join(STAGE_ORDER)})")
    return {stage: str(images[stage]) for stage in STAGE_ORDER if stage in images}


def check_order(source: str, target: str, force: bool) -> str:
    for stage in (source, target):
        if stage not in STAGE_ORDER:
            raise PromotionRefused(f"unknown stage {stage!r}: stages are {' -> '.join(STAGE_ORDER)}")
    step = STAGE_ORDER.index(target) - STAGE_ORDER.index(source)
    if step == 1:
        return f"order: {source} -> {target} is the next stage"
    if force:
        return f"order: {source} -> {target} forced (--force)"
    if step <= 0:
        raise PromotionRefused(f"refusing to promote backwards or in place ({source} -> {target}): releases move "
                               f"{' -> '.join(STAGE_ORDER)}; pass --force to roll back deliberately")
    skipped = ", ".join(STAGE_ORDER[STAGE_ORDER.index(source) + 1:STAGE_ORDER.index(target)])
    raise PromotionRefused(f"refusing to skip {skipped} ({source} -> {target}): promote through each stage, "
                           "or pass --force")


def check_pinned(pins: Mapping[str, str], source: str, images: Mapping[str, str] | None = None,
                 target: str | None = None) -> str:
    """The source's release is pinned by digest, and with ``images`` every flavour too, the source's own
    being its ``imageDigest`` and ``target``'s (when given) being there."""
    if not _DIGEST.match(pins["imageDigest"]):
        raise PromotionRefused(f"the {source} image is not pinned by digest ({pins['imageDigest']!r}): a release "
                               "needs 'sha256:<64 hex>' as recorded by the build job")
    if not _SHA256.match(pins["modelSha256"]):
        raise PromotionRefused(f"the {source} model pin {pins['modelSha256']!r} is not a sha256 digest")
    line = f"pinned: image {pins['imageDigest'][:19]}..., model {pins['modelSha256'][:12]}"
    if images is None:
        return line
    for stage, digest in images.items():
        if not _DIGEST.match(digest):
            raise PromotionRefused(f"the {source} release's {stage} flavour is not pinned by digest ({digest!r}): "
                                   f"{RELEASE_KEY}.{IMAGES_KEY}.{stage} needs 'sha256:<64 hex>' as recorded by the "
                                   "build job")
    if images.get(source) != pins["imageDigest"]:
        raise PromotionRefused(f"the {source} release is inconsistent: {RELEASE_KEY}.imageDigest "
                               f"{pins['imageDigest'][:19]}... is not its {source} flavour "
                               f"({RELEASE_KEY}.{IMAGES_KEY}.{source}: {images.get(source, 'not set')})")
    if target is not None and target not in images:
        raise PromotionRefused(f"the {source} release has no {target} flavour of the image ({RELEASE_KEY}."
                               f"{IMAGES_KEY} lists {', '.join(images) or 'nothing'}): {target} would run another "
                               f"stage's image; release a build that made every flavour (STAGES)")
    return f"{line}, flavours {', '.join(images)}"


def load_golden(path: Path) -> tuple[list[list[float]], list[int]]:
    try:
        data = json.loads(path.read_text())
        return data["instances"], [int(label) for label in data["labels"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PromotionRefused(f"no usable golden input at {path} ({exc}): `stagectl model build` writes it "
                               "beside the model; pass --golden FILE for another model") from None


def smoke_test(endpoint: str, golden: Path, pins: Mapping[str, str], source: str,
               api_key: str | None = None, timeout: float = 15.0) -> str:
    """POST the golden input to ``endpoint``/v1/predict; the labels and model version must match."""
    instances, labels = load_golden(golden)
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/v1/predict", data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise PromotionRefused(f"smoke test of {source} failed: {endpoint} answered HTTP {exc.code} "
                               f"{exc.read()[:300]!r}") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise PromotionRefused(f"smoke test of {source} failed: cannot reach {endpoint}: {exc}") from None
    got = [p.get("label") for p in answer.get("predictions", [])]
    if got != labels:
        raise PromotionRefused(f"smoke test of {source} failed: {endpoint} labelled the golden input {got}, "
                               f"expected {labels}")
    version = str((answer.get("model") or {}).get("version", ""))
    if version and not pins["modelSha256"].startswith(version):
        raise PromotionRefused(f"smoke test of {source} failed: {endpoint} serves model version {version}, but "
                               f"{source} pins {pins['modelSha256'][:12]}: deploy the pinned release first")
    return f"smoke test: {endpoint} labelled {len(labels)} golden inputs as expected (model {version or '?'})"


def _pulumi(runner: Callable[[Sequence[str]], str] | None) -> Callable[[Sequence[str]], str] | None:
    """``runner`` or the Pulumi CLI on PATH (None when there is none)."""
    if runner is not None:
        return runner
    if shutil.which("pulumi") is None:
        return None

    def run(cmd: Sequence[str]) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, check=True, timeout=60).stdout

    return run


def stack_output(stack: str, name: str, runner: Callable[[Sequence[str]], str] | None = None) -> str | None:
    """A stack output through the Pulumi CLI, or None when it cannot be read here."""
    run = _pulumi(runner)
    if run is None:
        return None
    try:
        value = run(["pulumi", "stack", "output", name, "--stack", stack]).strip()
    except Exception:  # any failure means "not available"; the caller explains
        return None
    return value or None


#: The Container Registry resource of every stage (components/registry.py) and its repository.
_REGISTRY_TYPE = "yandex:index/containerRegistry:ContainerRegistry"


def registry_in_state(stack: str, runner: Callable[[Sequence[str]], str] | None = None) -> str | None:
    """``cr.yandex/<id>/inference`` from the stack's state (``pulumi stack export``): a first,
    targeted ``pulumi up`` that created only the registry leaves the stack without outputs."""
    from components.registry import REGISTRY_HOST, SERVICE_REPOSITORY

    run = _pulumi(runner)
    if run is None:
        return None
    try:
        deployment = json.loads(run(["pulumi", "stack", "export", "--stack", stack])).get("deployment") or {}
    except Exception:  # not available here; the caller explains
        return None
    ids = [r.get("id") for r in deployment.get("resources") or [] if r.get("type") == _REGISTRY_TYPE and r.get("id")]
    return f"{REGISTRY_HOST}/{ids[0]}/{SERVICE_REPOSITORY}" if len(ids) == 1 else None


def set_release(text: str, pins: Mapping[str, str], images: Mapping[str, str] | None = None) -> str:
    """``text`` of a stack file with ``aistack:release`` set to ``pins`` and its ``images`` to ``images``
    (None: removed, as a release without flavours has none); nothing else changes."""
    document = _yaml().load(text)
    config = document.setdefault("config", CommentedMap())
    release = config.get(RELEASE_KEY)
    if release is None:
        release = config[RELEASE_KEY] = CommentedMap()
    for key in PIN_KEYS:
        if key in pins:
            release[key] = DoubleQuotedScalarString(pins[key])
    if images is None:
        release.pop(IMAGES_KEY, None)  # an older release's flavours would contradict its imageDigest
    else:
        flavours = release.get(IMAGES_KEY)
        if not isinstance(flavours, CommentedMap):
            flavours = release[IMAGES_KEY] = CommentedMap()
        for stage in [s for s in flavours if s not in images]:
            del flavours[stage]
        for stage, digest in images.items():
            flavours[stage] = DoubleQuotedScalarString(digest)
    return _dump(document)


def set_overlay_digest(text: str, digest: str, image: str = SERVICE_IMAGE, repository: str | None = None) -> str:
    """The prod overlay's kustomization with the service image's digest (and repository) replaced."""
    document = _yaml().load(text)
    entries = [e for e in document.get("images") or [] if str(e.get("name", "")).split("/")[-1] == image]
    if not entries:
        raise PromotionRefused(f"{OVERLAY} has no images entry named {image!r}: add one with a digest")
    for entry in entries:
        entry.pop("newTag", None)
        if repository is not None:
            entry["newName"] = repository
        entry["digest"] = DoubleQuotedScalarString(digest)
    return _dump(document)


def check_target(root: Path, target: str, new_text: str) -> str:
    """Plan, price and check the target stack as it would be with the new pins."""
    from stagectl.checks import assess
    from stagectl.plan import PlanError

    with tempfile.TemporaryDirectory(prefix="stagectl-promote-") as tmp:
        work = Path(tmp)
        (work / "Pulumi.yaml").write_text((root / "Pulumi.yaml").read_text())
        (work / f"Pulumi.{target}.yaml").write_text(new_text)
        for shared in ("models", "pricing"):
            if (root / shared).exists():
                (work / shared).symlink_to(root / shared, target_is_directory=True)
        try:
            assessment = assess(target, root=work)
        except PlanError as exc:
            raise PromotionRefused(f"the {target} stack does not plan with the new pins: {exc}") from None
    failed = [f"{r.rule.name}: {f.message}" for r in assessment.failed for f in r.findings]
    if failed:
        raise PromotionRefused(f"the {target} stack fails its guardrails with the new pins:\n  " + "\n  ".join(failed))
    cost = assessment.cost
    budget = f" within the budget {cost.budget:,.2f}" if cost.budget is not None else ""
    return (f"target: {target} passes {len(assessment.guardrails)} guardrails; "
            f"{cost.monthly_total:,.2f} {cost.currency}/month{budget}")


def _repository(stack: str, given: str | None, runner: Callable[[Sequence[str]], str] | None) -> str:
    repository = given or stack_output(stack, "image_repository", runner) or registry_in_state(stack, runner)
    if not repository:
        raise PromotionRefused(f"no image repository for {stack}: it is the stack output image_repository (create "
                               f"the stage's registry first: pulumi up --stack {stack}), or pass it (--image-from/"
                               "--image-to cr.yandex/<registry id>/inference)")
    return repository


def promote(source: str, target: str, root: Path, *, endpoint: str | None = None, golden: Path | None = None,
            force: bool = False, dry_run: bool = False, api_key: str | None = None,
            output_runner: Callable[[Sequence[str]], str] | None = None,
            image: ImageCopy | None = None) -> Promotion:
    """Run every gate, copy the image (``image``; None: do not copy), then write the pins (unless
    ``dry_run``). Raises PromotionRefused."""
    promotion = Promotion(source, target, {})
    promotion.gates.append(check_order(source, target, force))
    pins = read_pins(root, source)
    images = read_images(root, source)
    promotion.gates.append(check_pinned(pins, source, images, target))
    # what moves: the target's flavour, and those of the stages after it (the next promotion copies
    # them on from the target's registry); without flavours, the one image
    moving: list[tuple[str | None, str]]
    if images is None:
        promotion.pins = dict(pins)
        moving = [(None, pins["imageDigest"])]
        promotion.notes.append(f"the {source} release has no per-stage flavours ({RELEASE_KEY}.{IMAGES_KEY}): "
                               f"{target} gets the same image as {source}, {pins['imageDigest'][:19]}... (a release "
                               "built before the build made one image per stage)")
    else:
        promotion.pins = {**pins, "imageDigest": images[target]}
        promotion.images = dict(images)
        later = STAGE_ORDER[STAGE_ORDER.index(target):]
        moving = []
        for stage in (s for s in later if s in images):
            if images[stage] not in (digest for _, digest in moving):
                moving.append((stage, images[stage]))

    url = endpoint or stack_output(source, ENDPOINT_OUTPUTS[source], output_runner)
    if not url:
        raise PromotionRefused(f"no endpoint to smoke-test {source}: pass --endpoint URL (or run where "
                               f"`pulumi stack output {ENDPOINT_OUTPUTS[source]} --stack {source}` works)")
    golden_path = golden or _default_golden(root, source)
    promotion.gates.append(smoke_test(url, golden_path, promotion.pins, source,
                                      api_key if api_key is not None else os.environ.get("AISTACK_API_KEY")))

    target_file = root / f"Pulumi.{target}.yaml"
    before = target_file.read_text()
    after = set_release(before, promotion.pins, promotion.images)
    promotion.gates.append(check_target(root, target, after))
    if after != before:
        promotion.changes[target_file] = (before, after)
    target_repository: str | None = None
    if image is not None:
        source_repository = _repository(source, image.source, output_runner)
        target_repository = _repository(target, image.target, output_runner)
        for flavour, digest in moving:
            if dry_run:
                promotion.gates.append(f"image: would copy {_what(flavour)} {source_repository}@{digest[:19]}... "
                                       f"to {target_repository}{_why(flavour, target)} (dry run)")
            else:
                promotion.gates.append(copy_image(source_repository, target_repository, digest, image.tls_verify,
                                                  flavour=flavour) + _why(flavour, target))
    else:
        for flavour, digest in moving:
            promotion.gates.append(f"image: {_what(flavour)} {digest[:19]}... not copied (--no-copy-image): "
                                   f"{target}'s registry must already hold it{_why(flavour, target)}")
    if target == "prod":
        overlay = root / OVERLAY
        if not overlay.is_file():
            raise PromotionRefused(f"{OVERLAY} is missing: ArgoCD deploys prod from it")
        old = overlay.read_text()
        new = set_overlay_digest(old, promotion.pins["imageDigest"], repository=target_repository)
        if new != old:
            promotion.changes[overlay] = (old, new)
    if not dry_run:
        for path, (_, text) in promotion.changes.items():
            path.write_text(text)
    return promotion


def _why(flavour: str | None, target: str) -> str:
    """Why a flavour that the target does not run travels with it."""
    return f", for the promotion to {flavour}" if flavour is not None and flavour != target else ""


def _default_golden(root: Path, stack: str) -> Path:
    from stacks.config import ModelSettings

    release = ((_load(root / f"Pulumi.{stack}.yaml") or {}).get("config") or {}).get("aistack:model") or {}
    directory = release.get("dir") or ModelSettings().dir
    return root / directory / "golden.json"
