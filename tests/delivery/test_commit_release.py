"""scripts/ci/commit-release.sh against a real bare remote, from a job's dirty tree.

The push goes to the URL the script builds from CI_SERVER_URL (a port and a relative path kept)
and GITLAB_RELEASE_TOKEN; git's ``url.<base>.insteadOf`` maps exactly that URL to the local bare
repository, so a wrong URL is a failed push here too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "ci" / "commit-release.sh")
SERVER, PROJECT, TOKEN = "https://gitlab.example.test:8443/gitlab", "group/app", "glpat-release"
PUSH_URL = f"https://release-bot:{TOKEN}@gitlab.example.test:8443/gitlab/{PROJECT}.git"
PARTNER = ("config:\n  aistack:release:\n    imageDigest: \"sha256:old\"\n    modelSha256: \"404f\"\n"
           "  aistack:budget:\n    monthly: 900\n  aistack:zone: ru-central1-a\n")


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=env or _env()).stdout.strip()


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_", "GIT_"))}
    return {**base, "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.test", "GIT_COMMITTER_NAME": "dev",
            "GIT_COMMITTER_EMAIL": "dev@example.test", **extra}


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(the job's checkout, the bare remote, the job's environment) at the pipeline's commit."""
    remote, seed, work = tmp_path / "remote.git", tmp_path / "seed", tmp_path / "job"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(seed))
    (seed / "Pulumi.mvp.yaml").write_text("config: {}\n")
    (seed / "Pulumi.partner.yaml").write_text(PARTNER)
    git(seed, "add", ".")
    git(seed, "commit", "-qm", "init")
    git(seed, "push", "-q", "origin", "HEAD:main")
    git(tmp_path, "clone", "-q", str(remote), str(work))
    git(work, "config", f"url.{remote}.insteadOf", PUSH_URL)
    env = _env(CI_SERVER_URL=SERVER, CI_PROJECT_PATH=PROJECT, CI_DEFAULT_BRANCH="main",
               CI_SERVER_HOST="gitlab.example.test", CI_COMMIT_SHA=git(work, "rev-parse", "HEAD"),
               GITLAB_RELEASE_TOKEN=TOKEN)
    return work, seed, env


def _record(work: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, "Promote mvp to partner", *files], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)


def _remote_file(seed: Path, path: str) -> str:
    git(seed, "pull", "-q", "--ff-only", "origin", "main")
    return (seed / path).read_text()


def test_records_only_the_named_files_from_a_dirty_tree(job):
    work, seed, env = job
    (work / "Pulumi.mvp.yaml").write_text("config: {changed: by an artifact}\n")  # another stage's artifact
    (work / "image-mvp.digest").write_text("sha256:" + "a" * 64)  # untracked (the build's artifact)
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    head_before = git(work, "rev-parse", "HEAD")
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode == 0, result.stderr
    assert "recorded Pulumi.partner.yaml on main" in result.stdout
    assert "sha256:new" in _remote_file(seed, "Pulumi.partner.yaml")
    assert _remote_file(seed, "Pulumi.mvp.yaml") == "config: {}\n", "only the named files are recorded"
    log = git(seed, "log", "-1", "--format=%s|%an|%ae")
    assert log == "Promote mvp to partner [skip ci]|release bot|release-bot@gitlab.example.test"
    # the job's tree is as it was: same HEAD, its other changes still there
    assert git(work, "rev-parse", "HEAD") == head_before
    assert "Pulumi.mvp.yaml" in git(work, "status", "--porcelain")
    again = _record(work, env, "Pulumi.partner.yaml")
    assert again.returncode == 0 and "nothing to record" in again.stdout


def test_a_change_merged_meanwhile_is_kept(job):
    work, seed, env = job
    (seed / "Pulumi.partner.yaml").write_text(PARTNER.replace("ru-central1-a", "ru-central1-b"))
    (seed / "README.md").write_text("merged while the job ran\n")
    git(seed, "commit", "-qam", "zone b", env=_env())
    git(seed, "add", "README.md")
    git(seed, "commit", "-qm", "readme")
    git(seed, "push", "-q", "origin", "HEAD:main")
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode == 0, result.stderr
    text = _remote_file(seed, "Pulumi.partner.yaml")
    assert "sha256:new" in text and "ru-central1-b" in text
    assert (seed / "README.md").is_file()
    log = git(seed, "log", "--format=%s", "-3").splitlines()
    assert log == ["Promote mvp to partner [skip ci]", "readme", "zone b"]


def test_a_refused_push_is_redone(job, tmp_path):
    work, seed, env = job
    remote = tmp_path / "remote.git"
    hook = remote / "hooks" / "pre-receive"
    flag = tmp_path / "refused-once"
    hook.write_text(f"#!/bin/sh\n[ -e {flag} ] && exit 0\ntouch {flag}\necho 'main moved' >&2\nexit 1\n")
    hook.chmod(0o755)
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode == 0, result.stderr
    assert "push refused (attempt 1)" in result.stderr
    assert "sha256:new" in _remote_file(seed, "Pulumi.partner.yaml")


def test_a_conflicting_change_stops_and_says_so(job):
    work, seed, env = job
    (seed / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:other"))
    git(seed, "commit", "-qam", "someone else's release")
    git(seed, "push", "-q", "origin", "HEAD:main")
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode == 1
    assert "Pulumi.partner.yaml changed on main while this job ran, in the same lines" in result.stderr
    assert "sha256:other" in _remote_file(seed, "Pulumi.partner.yaml")


def test_the_push_url_keeps_the_servers_port_and_path(job):
    work, _, env = job
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    # a URL without the port or the path would not match insteadOf and the push would fail
    wrong = _record(work, {**env, "CI_SERVER_URL": "https://gitlab.example.test"}, "Pulumi.partner.yaml")
    assert wrong.returncode != 0
    right = _record(work, env, "Pulumi.partner.yaml")
    assert right.returncode == 0, right.stderr


def test_without_the_release_token_it_says_why(job):
    work, _, env = job
    env.pop("GITLAB_RELEASE_TOKEN")
    (work / "Pulumi.partner.yaml").write_text(PARTNER.replace("sha256:old", "sha256:new"))
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode != 0 and "GITLAB_RELEASE_TOKEN is not set (a protected variable" in result.stderr


def test_a_release_with_every_flavour_merges_with_a_change_merged_meanwhile(job):
    """deploy:mvp's `pulumi config set --path release.images.<stage>` adds lines to the release; a change
    merged meanwhile elsewhere in the file is kept beside them."""
    work, seed, env = job
    (seed / "Pulumi.partner.yaml").write_text(PARTNER.replace("monthly: 900", "monthly: 950"))
    git(seed, "commit", "-qam", "a bigger budget")
    git(seed, "push", "-q", "origin", "HEAD:main")
    flavours = "".join(f"      {stage}: sha256:{char * 64}\n" for stage, char in (("mvp", "a"), ("partner", "b"),
                                                                                  ("prod", "c")))
    released = PARTNER.replace("sha256:old", "sha256:" + "b" * 64).replace(
        '    modelSha256: "404f"\n', '    modelSha256: "404f"\n    images:\n' + flavours)
    (work / "Pulumi.partner.yaml").write_text(released)
    result = _record(work, env, "Pulumi.partner.yaml")
    assert result.returncode == 0, result.stderr
    text = _remote_file(seed, "Pulumi.partner.yaml")
    assert text == released.replace("monthly: 900", "monthly: 950")
