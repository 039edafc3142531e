"""The pipeline rehearsal: .gitlab-ci.yml's main pipeline and two merge-request pipelines, job by
job in pipeline order, run by gitlab-ci-local's shell executor (each job in its own copy of the
commit, with its needs' artifacts, as on a runner) against local stand-ins:

* a local OCI registry (Debian's ``docker-registry``) the build job pushes the image's three
  flavours (one per stage) to with buildah and promotion copies them within (one repository per
  stage);
* a bare git remote behind the push URL the release script builds from ``CI_SERVER_URL`` (git's
  ``url.<base>.insteadOf`` maps exactly that URL to it);
* a local fake of GitLab's API (tests/delivery/fake_gitlab.py): the notes the jobs post; it
  refuses any path it does not implement, and the test asserts none was called;
* the real Pulumi CLI (scripts/pulumi-cli.sh) with a file backend for login, stacks, stack tags,
  config and outputs; only ``pulumi up`` and ``pulumi preview`` are replaced, visibly
  (tests/delivery/rehearsal/bin/pulumi), by an engine that plans offline;
* the real service (``python -m service``) with the released model as the mvp and partner
  endpoints the promotion smoke tests call.

What runs for real: lint, build, deploy:mvp, promote:partner, promote:prod, plan, preview and
preview:skipped (every line of their scripts, their rules and artifacts). ``test`` is not run: it is
``make test``, the suite this rehearsal is part of. The protected variables hold stand-in values.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.delivery.fake_gitlab import GitLab, Token, User, serve
from tests.delivery.registries import LocalRegistry
from tests.service.buildah import BASE_IMAGE, BUILDAH_ROOT, ensure_base_image, pip_build_volumes
from tests.service.helpers import ServiceProcess, start_service

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GCL = ROOT / "tests" / "delivery" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"
WRAPPER = ROOT / "tests" / "delivery" / "rehearsal" / "bin"
SERVER_URL = "https://gitlab.rehearsal.test:8443/gitlab"
PROJECT_PATH, PROJECT_ID, MR_IID = "aistack/app", 7, 1
NOTES_TOKEN, RELEASE_TOKEN = "glpat-notes-rehearsal", "glpat-release-rehearsal"
BOT = User(21, "project_7_bot_notes")
STAGES = ("mvp", "partner", "prod")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.test",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.test"}
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@dataclass
class Job:
    name: str
    returncode: int
    log: str
    artifacts: Path  # what its artifacts:paths kept
    build: Path  # its copy of the project as the job left it (where a runner picks up reports)


@dataclass
class Rehearsal:
    work: Path
    remote: Path
    cloud: Path
    registry: LocalRegistry
    gitlab: GitLab
    pulumi: str
    env: dict[str, str]
    protected: dict[str, str]
    unprotected: dict[str, str]
    service: ServiceProcess
    ran: list[Job] = field(default_factory=list)

    def repository(self, stage: str) -> str:
        return f"{self.registry.host}/{stage}/inference"

    def run(self, job: str, variables: dict[str, str], expect: int = 0) -> Job:
        """Run one job as its pipeline would; ``expect`` 0: it must pass, else it must fail (a
        failed manual job allowed to fail counts as failed: gitlab-ci-local prints WARN for it)."""
        # each job in its own copy of the commit plus its needs' artifacts, nothing copied back (as on runners)
        args = [str(GCL), job, "--shell-isolation", "--no-artifacts-to-source", "--force-shell-executor", "--no-color",
                "--timestamps"]
        for key, value in variables.items():
            args += ["--variable", f"{key}={value}"]
        args += ["--manual", job]
        result = subprocess.run(args, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=1800)
        out = result.stdout + result.stderr
        # the summary: " PASS  [ 3.2 s] deploy:mvp" (WARN: failed but allowed to fail)
        status = re.search(rf"^\s*(PASS|WARN|FAIL)\s+(?:\[[^]]*\]\s+)?{re.escape(job)}(?:\s|$)", out, re.M)
        passed = result.returncode == 0 and status is not None and status.group(1) == "PASS"
        state = self.work / ".gitlab-ci-local"
        name = _safe_name(job)
        ran = Job(job, 0 if passed else 1, out, state / "artifacts" / name, state / "builds" / name)
        self.ran.append(ran)
        assert passed == (expect == 0), (
            f"job {job} {'failed' if not passed else 'passed'}, expected {'success' if expect == 0 else 'failure'}:\n"
            f"{out[-8000:]}")
        return ran

    def listed(self, variables: dict[str, str]) -> set[str]:
        args = [str(GCL), "--list", "--no-color"]
        for key, value in variables.items():
            args += ["--variable", f"{key}={value}"]
        result = subprocess.run(args, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("name "))
        return {line.split()[0] for line in lines[start + 1:] if line.strip()}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.pulumi, *args], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=120)

    def remote_file(self, path: str, ref: str = "main") -> str:
        return _git(self.remote, "show", f"{ref}:{path}")

    def main_variables(self) -> dict[str, str]:
        return {**self.protected, **self.unprotected, "CI_PIPELINE_SOURCE": "push"}


def _safe_name(job: str) -> str:
    """gitlab-ci-local's file name for a job (its safeDockerString: other characters base64-encoded)."""
    return re.sub(r"[^\w-]+", lambda m: base64.b64encode(m.group().encode()).decode().rstrip("="), job)


def _copy_project(dest: Path) -> None:
    """The project as it is in this checkout (tracked and new files; nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _pulumi_cli() -> str:
    result = subprocess.run([str(ROOT / "scripts" / "pulumi-cli.sh")], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, f"scripts/pulumi-cli.sh failed:\n{result.stderr[-3000:]}"
    return str(ROOT / result.stdout.strip().splitlines()[-1])


def _ca_file(path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(path.with_suffix(".key")), "-out", str(path), "-days", "2", "-subj", "/CN=Rehearsal Root CA"],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    assert GCL.exists(), "gitlab-ci-local is missing: scripts/install-test-deps.sh (npm ci in tests/delivery/node)"
    top = tmp_path_factory.mktemp("rehearsal")
    work, remote, cloud = top / "app", top / "remote.git", top / "cloud"
    pulumi = _pulumi_cli()

    # the project on a GitLab-like remote (a bare repository behind the origin and push URLs)
    _copy_project(work)
    _git(top, "init", "-q", "--bare", "-b", "main", str(remote))
    _git(work, "init", "-q", "-b", "main")
    origin = f"{SERVER_URL}/{PROJECT_PATH}.git"
    push_url = f"{SERVER_URL.replace('https://', f'https://release-bot:{RELEASE_TOKEN}@')}/{PROJECT_PATH}.git"
    _git(work, "remote", "add", "origin", origin)
    for url in (origin, push_url):
        _git(work, "config", "--add", f"url.{remote}.insteadOf", url)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "The project")

    # what the team does once (docs/delivery.md): the state backend and the three stacks, salts committed
    state, home = top / "state", top / "pulumi-home"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "PULUMI_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{WRAPPER}:{os.environ['PATH']}", PULUMI_HOME=str(home), PULUMI_SKIP_UPDATE_CHECK="true",
               PULUMI_CONFIG_PASSPHRASE="rehearsal-passphrase", REHEARSAL_PULUMI=pulumi, REHEARSAL_CLOUD=str(cloud),
               UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv")))
    subprocess.run([pulumi, "login", f"file://{state}"], cwd=work, env=env, check=True, capture_output=True)
    for stage in STAGES:
        subprocess.run([pulumi, "stack", "init", stage, "--secrets-provider", "passphrase"], cwd=work, env=env,
                       check=True, capture_output=True)
    _git(work, "commit", "-qam", "Initialise the stacks")
    _git(work, "push", "-q", "origin", "main")

    registry = LocalRegistry(top / "registry")
    service = start_service(top / "svc", MODEL_URI=str(ROOT / "models" / "digits" / "model.onnx"))
    cloud.mkdir()
    outputs = {"mvp": {"invoke_url": service.base, "registry_id": "rehearsal"},
               "partner": {"service_url": service.base}, "prod": {}}
    for stage in STAGES:
        (cloud / f"{stage}.outputs.json").write_text(json.dumps(
            {**outputs[stage], "image_repository": f"{registry.host}/{stage}/inference"}))
    ca = top / "yandex-ca.pem"
    _ca_file(ca)
    # docs/delivery.md: partner and prod are deployed once by hand before their first promotion (it creates
    # the registry promotion copies the image into); here through the same replaced `pulumi up`
    (work / "build").mkdir()
    shutil.copy(ca, work / "build" / "yandex-ca.pem")
    for stage in ("partner", "prod"):
        first = subprocess.run([sys.executable, "-m", "tests.delivery.rehearsal.engine", "up", "--yes",
                                "--stack", stage], cwd=work, env={**env, "PYTHONPATH": str(work)},
                               capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, f"first deploy of {stage}: {first.stderr[-3000:]}"
    BUILDAH_ROOT.mkdir(parents=True, exist_ok=True)
    ensure_base_image(top)
    key = base64.b64encode(json.dumps({"id": "aje-rehearsal", "service_account_id": "aje-sa",
                                       "private_key": "rehearsal"}).encode()).decode()
    protected = {
        "YC_SA_KEY_JSON_B64": key, "YC_CLOUD_ID": "b1g-rehearsal", "PULUMI_STATE_BUCKET": "rehearsal-state",
        "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal",
        "PULUMI_CONFIG_PASSPHRASE": "rehearsal-passphrase", "YC_REGISTRY_ID": "rehearsal",
        "YC_CR_KEY_JSON_B64": key, "GITLAB_RELEASE_TOKEN": RELEASE_TOKEN,
    }
    with serve(GitLab(projects={PROJECT_ID: PROJECT_PATH}, merge_requests={(PROJECT_ID, MR_IID)},
                      tokens={NOTES_TOKEN: Token(BOT)})) as gitlab:
        unprotected = {
            "GITLAB_NOTES_TOKEN": NOTES_TOKEN, "MVP_URL": service.base, "PARTNER_URL": service.base,
            # where the stand-ins are (each one a variable the pipeline documents or defaults)
            "CI_SERVER_URL": SERVER_URL, "CI_SERVER_HOST": "gitlab.rehearsal.test", "CI_API_V4_URL": gitlab.api,
            "CI_PROJECT_PATH": PROJECT_PATH, "CI_PROJECT_ID": str(PROJECT_ID), "CI_DEFAULT_BRANCH": "main",
            "PULUMI_BACKEND_URL": f"file://{state}", "IMAGE_REPOSITORY": f"{registry.host}/mvp/inference",
            "REGISTRY_HOST": registry.host, "REGISTRY_TLS_VERIFY": "false", "YANDEX_CA_URL": f"file://{ca}",
            "BASE_IMAGE": BASE_IMAGE, "BUILDAH_ROOT": str(BUILDAH_ROOT), "STORAGE_DRIVER": "vfs",
            "BUILD_EXTRA_ARGS": " ".join(pip_build_volumes(top)), "UV_CACHE_DIR": env["UV_CACHE_DIR"],
        }
        yield Rehearsal(work, remote, cloud, registry, gitlab, pulumi, env, protected, unprotected, service)
    service.stop()
    registry.stop()


def _check_reports(job: str, ran: Job) -> None:
    """GitLab's rule for ``artifacts:reports:terraform``: one plan report per job, the summary JSON."""
    document = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    reports = (document[job].get("artifacts") or {}).get("reports") or {}
    if "terraform" not in reports:
        return
    paths = reports["terraform"] if isinstance(reports["terraform"], list) else [reports["terraform"]]
    assert len(paths) == 1, f"{job}: artifacts:reports:terraform names {len(paths)} files; GitLab takes one per job"
    report = json.loads((ran.build / paths[0]).read_text())
    assert set(report) == {"create", "update", "delete"} and all(isinstance(v, int) for v in report.values())


def test_main_pipeline_builds_deploys_and_promotes(rehearsal: Rehearsal) -> None:
    variables = rehearsal.main_variables()
    assert rehearsal.listed(variables) == {"lint", "test", "build", "deploy:mvp", "promote:partner", "promote:prod"}
    commit = _git(rehearsal.work, "rev-parse", "HEAD")

    rehearsal.run("lint", variables)

    # one flavour per stage, each pushed as <commit>-<stage> with its digest in image-<stage>.digest
    build = rehearsal.run("build", variables)
    flavours = {stage: (build.artifacts / f"image-{stage}.digest").read_text().strip() for stage in STAGES}
    assert len(set(flavours.values())) == len(STAGES), flavours
    assert sorted(p.name for p in build.artifacts.glob("image*.digest")) == [f"image-{s}.digest" for s in STAGES]
    for stage, flavour in flavours.items():
        assert rehearsal.registry.serves("mvp/inference", flavour)
        assert rehearsal.registry.labels("mvp/inference", flavour)["io.aistack.stage"] == stage
    assert {f"{commit}-{stage}" for stage in STAGES} <= set(rehearsal.registry.tags("mvp/inference"))
    digest = flavours["mvp"]

    deploy = rehearsal.run("deploy:mvp", variables)
    assert "REHEARSAL: 'pulumi up --yes --stack mvp --policy-pack policy' is replaced" in deploy.log
    mvp = yaml.safe_load(rehearsal.remote_file("Pulumi.mvp.yaml"))["config"]["aistack:release"]
    assert mvp["imageDigest"] == digest
    assert mvp["images"] == flavours
    assert _git(rehearsal.remote, "log", "-1", "--format=%s", "main") == f"Deploy {digest} to mvp [skip ci]"
    assert rehearsal.cli("stack", "tag", "get", "aistack:commit", "--stack", "mvp").stdout.strip() == commit

    # each promotion gives the target its own flavour, and carries the mapping
    promoted = rehearsal.run("promote:partner", variables)
    assert f"ok  image: partner flavour {flavours['partner'][:19]}... copied to" in promoted.log
    assert rehearsal.registry.serves("partner/inference", flavours["partner"])
    assert rehearsal.registry.serves("partner/inference", flavours["prod"]), "for the promotion to prod"
    assert not rehearsal.registry.serves("partner/inference", flavours["mvp"])
    partner = yaml.safe_load(rehearsal.remote_file("Pulumi.partner.yaml"))["config"]["aistack:release"]
    assert partner == {**mvp, "imageDigest": flavours["partner"]}
    assert _git(rehearsal.remote, "log", "-1", "--format=%s", "main") == "Promote mvp to partner [skip ci]"

    promoted = rehearsal.run("promote:prod", variables)
    assert f"ok  image: prod flavour {flavours['prod'][:19]}... copied to" in promoted.log
    assert rehearsal.registry.serves("prod/inference", flavours["prod"])
    assert not rehearsal.registry.serves("prod/inference", flavours["partner"])
    overlay = yaml.safe_load(rehearsal.remote_file("deploy/overlays/prod/kustomization.yaml"))
    (image,) = overlay["images"]
    assert (image["newName"], image["digest"]) == (rehearsal.repository("prod"), flavours["prod"])
    prod = yaml.safe_load(rehearsal.remote_file("Pulumi.prod.yaml"))["config"]["aistack:release"]
    assert prod == {**mvp, "imageDigest": flavours["prod"]}
    assert rehearsal.cli("stack", "tag", "get", "aistack:commit", "--stack", "prod").stdout.strip() == commit

    # a promotion from an older pipeline would re-apply older infrastructure code: refused
    _git(rehearsal.work, "checkout", "-q", "HEAD~1")
    try:
        old = rehearsal.run("promote:partner", variables, expect=1)
    finally:
        _git(rehearsal.work, "checkout", "-q", "main")
    assert f"refusing: partner was deployed from {commit}" in old.log
    assert not rehearsal.gitlab.refused


def _merge_request_variables(rehearsal: Rehearsal, branch_base: str, **extra: str) -> dict[str, str]:
    return {**rehearsal.unprotected, "CI_PIPELINE_SOURCE": "merge_request_event", "CI_COMMIT_BRANCH": "",
            "CI_MERGE_REQUEST_IID": str(MR_IID), "CI_MERGE_REQUEST_PROJECT_ID": str(PROJECT_ID),
            "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": str(PROJECT_ID), "CI_MERGE_REQUEST_DIFF_BASE_SHA": branch_base,
            **extra}


@pytest.fixture(scope="module")
def feature(rehearsal: Rehearsal) -> Iterator[str]:
    """A merge request's branch on main as the remote has it: the mvp container gets more memory."""
    _git(rehearsal.work, "fetch", "-q", "origin", "main")
    base = _git(rehearsal.work, "rev-parse", "FETCH_HEAD")
    _git(rehearsal.work, "checkout", "-q", "-b", "feature/memory", base)
    path = rehearsal.work / "Pulumi.mvp.yaml"
    text = path.read_text()
    document = yaml.safe_load(text)
    memory = document["config"]["aistack:serverless"]["memoryMb"]
    path.write_text(text.replace(f"memoryMb: {memory}", f"memoryMb: {memory * 2}"))
    _git(rehearsal.work, "commit", "-qam", "More memory for the mvp container")
    yield base
    _git(rehearsal.work, "checkout", "-q", "main")


def test_merge_request_from_an_unprotected_branch(rehearsal: Rehearsal, feature: str) -> None:
    variables = _merge_request_variables(rehearsal, feature)
    assert rehearsal.listed(variables) == {"lint", "test", "plan", "preview:skipped"}

    plan = rehearsal.run("plan", variables)
    _check_reports("plan", plan)
    assert json.loads((plan.build / "plan.json").read_text())["update"] >= 1
    notes = rehearsal.gitlab.notes[(PROJECT_ID, MR_IID)]
    (note,) = [n for n in notes if n["body"].startswith("<!-- aistack:stagectl-diff -->")]
    assert note["author"]["id"] == BOT.id and "mvp" in note["body"]

    skipped = rehearsal.run("preview:skipped", variables)
    assert "pulumi preview skipped - the cloud credentials are protected variables" in skipped.log
    assert not rehearsal.gitlab.refused


def test_merge_request_from_a_protected_branch_previews_the_whole_stacks(rehearsal: Rehearsal, feature: str) -> None:
    target = _git(rehearsal.work, "rev-parse", "feature/memory~1")
    variables = {**_merge_request_variables(rehearsal, feature, CI_MERGE_REQUEST_TARGET_BRANCH_SHA=target),
                 **rehearsal.protected}
    assert rehearsal.listed(variables) == {"lint", "test", "plan", "preview"}

    rehearsal.run("plan", variables)
    preview = rehearsal.run("preview", variables)
    assert "REHEARSAL: 'pulumi preview --json --show-sames --policy-pack policy --stack mvp' is replaced" in preview.log
    # partner (deployed before) is untouched by the merge request: every resource listed, as same
    digest = json.loads((preview.artifacts / "preview-partner.json").read_text())
    assert {step["op"] for step in digest["steps"]} == {"same"}
    assert len(digest["steps"]) == digest["changeSummary"]["same"] > 10, "--show-sames lists every unchanged resource"
    notes = rehearsal.gitlab.notes[(PROJECT_ID, MR_IID)]
    (note,) = [n for n in notes if n["body"].startswith("<!-- aistack:pulumi-preview -->")]
    assert "mvp" in note["body"] and note["author"]["id"] == BOT.id
    # the same merge request's plan note was updated in place, not duplicated
    assert len([n for n in notes if n["body"].startswith("<!-- aistack:stagectl-diff -->")]) == 1
    assert not rehearsal.gitlab.refused
