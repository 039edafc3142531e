"""The GitLab pipeline: schema-valid, GitLab's conventions, scripts shellchecked, jobs run locally."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / ".gitlab-ci.yml"
GCL = ROOT / "tests" / "delivery" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"


@pytest.fixture(scope="module")
def jobs() -> dict:
    document = yaml.safe_load(PIPELINE.read_text())
    return {k: v for k, v in document.items() if isinstance(v, dict) and ("script" in v or "extends" in v)
            and not k.startswith(".")}


def test_pipeline_passes_gitlab_schema():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci",
                             str(PIPELINE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stacks_deploy_one_at_a_time_behind_environments(jobs):
    deploys = {name: job for name, job in jobs.items() if name.startswith(("deploy:", "promote:"))}
    assert set(deploys) == {"deploy:mvp", "promote:partner", "promote:prod"}
    assert {job["resource_group"] for job in deploys.values()} == {"stack-mvp", "stack-partner", "stack-prod"}
    for name, job in deploys.items():
        stack = name.split(":")[1]
        assert job["extends"] == ".pulumi" and job["environment"]["name"] == stack
        script = job["script"]
        # never an older commit over a newer one; the deployed commit recorded after `pulumi up`
        up = next(i for i, line in enumerate(script) if line.startswith("pulumi up --yes"))
        assert script.index(f"scripts/ci/stack-commit.sh check {stack}") < up
        assert script.index(f"scripts/ci/stack-commit.sh record {stack}") == up + 1
    for name in ("promote:partner", "promote:prod"):
        # manual, and allowed to fail, so that a pipeline nobody promotes is not left "blocked"
        assert jobs[name]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual",
                                        "allow_failure": True}]
        assert any("stagectl promote" in line for line in jobs[name]["script"])
    assert "pulumi up --yes --stack mvp --policy-pack policy" in jobs["deploy:mvp"]["script"]


def test_merge_request_jobs(jobs):
    plan = jobs["plan"]
    assert plan["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert 'base="${CI_MERGE_REQUEST_TARGET_BRANCH_SHA:-$CI_MERGE_REQUEST_DIFF_BASE_SHA}"' in plan["script"]
    assert any('stagectl diff --base "$base" --format markdown --gitlab-report plan.json' in s for s in plan["script"])
    assert plan["artifacts"]["reports"]["terraform"] == "plan.json", "GitLab takes one Terraform report per job"
    assert "extends" in plan and plan["extends"] == ".python", "the plan job gets no cloud credentials"
    preview = jobs["preview"]
    (rule,) = preview["rules"]
    assert "$YC_SA_KEY_JSON_B64" in rule["if"], "preview only where the protected credentials are"
    assert "$CI_MERGE_REQUEST_SOURCE_PROJECT_ID == $CI_MERGE_REQUEST_PROJECT_ID" in rule["if"]
    assert any("--show-sames" in s and "--policy-pack policy" in s for s in preview["script"])
    skipped = jobs["preview:skipped"]
    assert skipped["rules"][0] == {**rule, "when": "never"}, "the explainer runs exactly where preview does not"


def test_tokens_are_split_by_what_they_may_do():
    text = PIPELINE.read_text()
    header = text.split("workflow:")[0]
    assert "GITLAB_NOTES_TOKEN      NOT protected: project access token, role Reporter, scope api" in header
    assert "GITLAB_RELEASE_TOKEN    protected: project access token of the release bot, role Maintainer" in header
    assert "GITLAB_PROJECT_TOKEN" not in text
    release = (ROOT / "scripts" / "ci" / "commit-release.sh").read_text()
    assert "GITLAB_RELEASE_TOKEN" in release and "GITLAB_NOTES_TOKEN" not in release
    from stagectl.gitlab import TOKEN_VARIABLE

    assert TOKEN_VARIABLE == "GITLAB_NOTES_TOKEN"


def test_the_build_job_uses_the_builder_the_tests_use(jobs):
    build = jobs["build"]
    assert build["script"] == ["scripts/ci/build-image.sh"]
    assert build["variables"] == {"STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
    script = (ROOT / "scripts" / "ci" / "build-image.sh").read_text()
    assert "--file service/Dockerfile service" in script, "the build context is service/, as the Dockerfile expects"
    assert 'digest="image-${stage}.digest"' in script and '--digestfile "$digest"' in script
    assert 'read -r -a stages <<< "${STAGES:-mvp partner prod}"' in script
    assert build["artifacts"]["paths"] == ["image-*.digest"]
    assert not (ROOT / "scripts" / "ci" / "kaniko-build.sh").exists()


def test_deploy_pins_mvps_flavour_and_records_every_flavour(jobs):
    script = jobs["deploy:mvp"]["script"]
    assert script[0] == "scripts/ci/require-digest.sh image-mvp.digest image-partner.digest image-prod.digest"
    assert 'pulumi config set --path release.imageDigest "$(cat image-mvp.digest)" --stack mvp' in script
    assert ('for stage in mvp partner prod; do pulumi config set --path "release.images.$stage" '
            '"$(cat "image-$stage.digest")" --stack mvp; done') in script
    up = script.index("pulumi up --yes --stack mvp --policy-pack policy")
    assert all(i < up for i, line in enumerate(script) if "pulumi config set" in line)
    assert script[-1] == 'scripts/ci/commit-release.sh "Deploy $(cat image-mvp.digest) to mvp" Pulumi.mvp.yaml'
    assert "image.digest" not in PIPELINE.read_text(), "one name for the digest files: image-<stage>.digest"


FAKE_BUILDAH = """#!/usr/bin/env bash
# records each call; `push --digestfile F SRC DEST` writes a digest derived from DEST
printf '%s\n' "$*" >> "$BUILDAH_LOG"
args=("$@")
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = --digestfile ]; then
    printf 'sha256:%s' "$(printf '%s' "${args[-1]}" | sha256sum | cut -c1-64)" > "${args[$((i + 1))]}"
  fi
done
"""


def _build(tmp_path: Path, **variables: str) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    """scripts/ci/build-image.sh in a copy of scripts/ and service/'s requirements, with a buildah
    that records its calls; returns the run, the calls and the copy."""
    work = tmp_path / "work"
    (work / "scripts" / "ci").mkdir(parents=True)
    for name in ("build-image.sh", "require-digest.sh"):
        target = work / "scripts" / "ci" / name
        target.write_text((ROOT / "scripts" / "ci" / name).read_text())
        target.chmod(0o755)
    (work / "service" / "requirements").mkdir(parents=True)
    for stage in ("mvp", "partner", "prod"):
        (work / "service" / "requirements" / f"{stage}.txt").write_text("")
    (work / "image-prod.digest").write_text("sha256:" + "0" * 64)  # an earlier build's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "buildah").write_text(FAKE_BUILDAH)
    (bin_dir / "buildah").chmod(0o755)
    log = tmp_path / "buildah.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "YC_", "STAGES", "BUILD"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", BUILDAH_LOG=str(log), CI_COMMIT_SHA="c0ffee" * 6 + "c0ff",
               IMAGE_REPOSITORY="registry.test/mvp/inference", **variables)
    result = subprocess.run([str(work / "scripts" / "ci" / "build-image.sh")], cwd=work, env=env, capture_output=True,
                            text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else [], work


def test_the_build_makes_one_flavour_per_stage(tmp_path):
    result, calls, work = _build(tmp_path, BASE_IMAGE="localhost/base:1")
    assert result.returncode == 0, result.stderr
    commit = "c0ffee" * 6 + "c0ff"
    builds = [c for c in calls if c.startswith("build ")]
    pushes = [c for c in calls if c.startswith("push ")]
    assert len(builds) == len(pushes) == 3
    for stage, build, push in zip(("mvp", "partner", "prod"), builds, pushes, strict=True):
        tag = f"registry.test/mvp/inference:{commit}-{stage}"
        assert f"--build-arg BASE_IMAGE=localhost/base:1 --build-arg STAGE={stage} " in build
        assert build.endswith(f"--tag {tag} --file service/Dockerfile service")
        assert push == f"push --tls-verify=true --digestfile image-{stage}.digest {tag} docker://{tag}"
        assert f"rmi {tag}" in calls, "the local copy is dropped once pushed"
        assert (work / f"image-{stage}.digest").read_text().startswith("sha256:")
        assert f"pushed {tag} (the {stage} flavour, digest sha256:" in result.stdout
    digests = {(work / f"image-{stage}.digest").read_text() for stage in ("mvp", "partner", "prod")}
    assert len(digests) == 3 and "sha256:" + "0" * 64 not in digests


def test_stages_selects_the_flavours_and_leaves_no_stale_digest(tmp_path):
    result, calls, work = _build(tmp_path, STAGES="partner")
    assert result.returncode == 0, result.stderr
    assert [c.split("--tag ")[1].split()[0] for c in calls if c.startswith("build ")] == [
        "registry.test/mvp/inference:" + "c0ffee" * 6 + "c0ff-partner"]
    assert sorted(p.name for p in work.glob("image-*.digest")) == ["image-partner.digest"]


@pytest.mark.parametrize("stages", ["staging", "mvp qa", " "])
def test_an_unknown_or_empty_stage_is_refused_before_building(tmp_path, stages):
    result, calls, _ = _build(tmp_path, STAGES=stages)
    assert result.returncode == 2 and calls == []
    assert "build-image.sh: " in result.stderr


def test_credentials_come_only_from_the_login_script():
    text = PIPELINE.read_text()
    login = (ROOT / "scripts" / "ci" / "pulumi-login.sh").read_text()
    assert ('pulumi login "${PULUMI_BACKEND_URL:-s3://${PULUMI_STATE_BUCKET}?endpoint=storage.yandexcloud.net'
            '&region=ru-central1}"') in login
    for secret in ("AWS_SECRET_ACCESS_KEY", "PULUMI_CONFIG_PASSPHRASE", "YC_SA_KEY_JSON_B64", "GITLAB_RELEASE_TOKEN"):
        # named in the header comment, never given a value in the file
        assert f"{secret}:" not in text.split("workflow:")[1]


def _job_script(document: dict, name: str) -> list[str]:
    job = document[name]
    base = document.get(job.get("extends", ""), {}) if isinstance(job.get("extends"), str) else {}
    return list(job.get("before_script", base.get("before_script", []))) + list(job["script"])


@pytest.mark.parametrize("name", ["lint", "test", "build", "plan", "preview", "preview:skipped", "deploy:mvp",
                                  "promote:partner", "promote:prod"])
def test_job_scripts_pass_shellcheck(name, tmp_path):
    document = yaml.safe_load(PIPELINE.read_text())
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nset -e\n" + "\n".join(_job_script(document, name)) + "\n")
    result = subprocess.run(["shellcheck", "-e", "SC1091", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ci_scripts_pass_shellcheck():
    scripts = sorted((ROOT / "scripts").rglob("*.sh"))
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _gcl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GCL), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def _listed(result: subprocess.CompletedProcess[str]) -> set[str]:
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name "))
    return {line.split()[0] for line in lines[start + 1:] if line.strip()}


def test_pipelines_select_the_right_jobs():
    main = _gcl("--list")
    assert main.returncode == 0, main.stderr
    assert _listed(main) == {"lint", "test", "build", "deploy:mvp", "promote:partner", "promote:prod"}
    same_project = ["--variable", "CI_PIPELINE_SOURCE=merge_request_event", "--variable", "CI_COMMIT_BRANCH=",
                    "--variable", "CI_MERGE_REQUEST_SOURCE_PROJECT_ID=7", "--variable", "CI_MERGE_REQUEST_PROJECT_ID=7"]
    unprotected = _gcl("--list", *same_project)
    assert _listed(unprotected) == {"lint", "test", "plan", "preview:skipped"}
    protected = _gcl("--list", *same_project, "--variable", "YC_SA_KEY_JSON_B64=eyJ9")
    assert _listed(protected) == {"lint", "test", "plan", "preview"}
    fork = _gcl("--list", "--variable", "CI_PIPELINE_SOURCE=merge_request_event", "--variable", "CI_COMMIT_BRANCH=",
                "--variable", "CI_MERGE_REQUEST_SOURCE_PROJECT_ID=8", "--variable", "CI_MERGE_REQUEST_PROJECT_ID=7",
                "--variable", "YC_SA_KEY_JSON_B64=eyJ9")
    assert "preview" not in _listed(fork), "a fork's merge request never gets credentials"


def test_require_digest(tmp_path):
    good, other, bad = tmp_path / "good", tmp_path / "other", tmp_path / "bad"
    good.write_text("sha256:" + "ab" * 32 + "\n")
    other.write_text("sha256:" + "cd" * 32)
    bad.write_text("latest\n")
    script = str(ROOT / "scripts" / "ci" / "require-digest.sh")
    assert subprocess.run([script, str(good)]).returncode == 0
    assert subprocess.run([script, str(good), str(other)]).returncode == 0
    result = subprocess.run([script, str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "does not hold an image digest" in result.stderr
    # every file is checked, each one that fails named
    result = subprocess.run([script, str(good), str(bad), str(tmp_path / "image-prod.digest")], capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert f"{bad} does not hold an image digest" in result.stderr
    assert f"{tmp_path / 'image-prod.digest'} is missing" in result.stderr
    assert subprocess.run([script], capture_output=True).returncode == 2
