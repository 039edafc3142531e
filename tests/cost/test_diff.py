"""``stagectl diff`` on two revisions of a fixture repository, and ``preview-comment``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pricing.book import load_price_book
from stagectl import diff

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "diff-comment.md"
COPIED = ("Pulumi.yaml", "Pulumi.mvp.yaml", "stacks", "components", "stagectl", "policy", "pricing")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def edit_stack(repo: Path, change) -> None:
    path = repo / "Pulumi.mvp.yaml"
    document = yaml.safe_load(path.read_text())
    change(document["config"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory) -> tuple[Path, str]:
    """A repository whose base revision has a public container with 1 GB; the working tree
    makes it private (a binding removed), gives it 2 GB (changed) and requires an API key (added)."""
    repo = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    edit_stack(repo, lambda c: c["aistack:serverless"].update(public=True, memoryMb=1024))
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@example.test", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@example.test", "-c", "user.name=t", "commit", "-qm", "base")
    base = git(repo, "rev-parse", "HEAD")

    def head_change(config: dict) -> None:
        config["aistack:serverless"].update(public=False, memoryMb=2048, requireApiKey=True)
        config["aistack:apiKey"] = {"secure": "v1:AAAAencryptedvalue"}

    edit_stack(repo, head_change)
    return repo, base


@pytest.fixture(scope="module")
def mvp_diff(fixture_repo) -> diff.StackDiff:
    repo, base = fixture_repo
    (result,) = diff.run_diff(base, root=repo, stacks=["mvp"])
    return result


def test_added_changed_removed(mvp_diff):
    assert sorted(r.name for r in mvp_diff.added if r.custom) == [
        "mvp-api-key-reader-0", "mvp-api-key-secret", "mvp-api-key-version"]
    assert [r.name for r in mvp_diff.removed] == ["mvp-inference-public-invoker"]
    changed = {r.name: changes for r, changes in mvp_diff.changed}
    assert set(changed) == {"mvp-inference-container"}
    paths = {c.path: (c.before, c.after) for c in changed["mvp-inference-container"]}
    assert paths["memory"] == (1024, 2048)
    assert "secrets[2].environmentVariable" in paths
    assert mvp_diff.counts == {"create": 3, "update": 1, "delete": 1}


def test_secret_stays_redacted(mvp_diff):
    version = next(r for r in mvp_diff.added if r.name == "mvp-api-key-version")
    assert version.inputs["entries"] == "[secret]"
    assert "encryptedvalue" not in json.dumps(diff.to_json([mvp_diff]))


def test_cost_delta_is_exact(mvp_diff):
    book = load_price_book()
    busy_hours = 1_000_000 * 50 / 3_600_000  # default usage: 1M requests of 50 ms
    expected = 1.0 * busy_hours * book.price("serverless.memory").usd + book.price("lockbox.secret_version").usd
    assert mvp_diff.monthly_after - mvp_diff.monthly_before == pytest.approx(expected, abs=1e-9)


def test_markdown_comment_snapshot(mvp_diff):
    text = diff.render_markdown([mvp_diff], "base-revision")
    assert text.startswith(diff.MARKER)
    assert text == SNAPSHOT.read_text(), "the comment changed: review it and update snapshots/diff-comment.md"


def test_gitlab_report_sums_the_stacks(mvp_diff, tmp_path):
    path = diff.write_gitlab_report([mvp_diff], tmp_path / "plan.json")
    assert json.loads(path.read_text()) == {"create": 3, "update": 1, "delete": 1}
    twice = diff.write_gitlab_report([mvp_diff, mvp_diff], tmp_path / "two.json")
    assert json.loads(twice.read_text()) == {"create": 6, "update": 2, "delete": 2}


def test_unknown_base_is_refused(fixture_repo):
    repo, _ = fixture_repo
    with pytest.raises(diff.DiffError, match="unknown git revision 'no-such-ref'"):
        diff.run_diff("no-such-ref", root=repo, stacks=["mvp"])


def test_guardrail_failure_makes_the_cli_exit_non_zero(fixture_repo, tmp_path):
    repo, base = fixture_repo
    edit_stack(repo, lambda c: c.update({"aistack:budget": {"monthly": 0.5}}))
    try:
        result = subprocess.run([sys.executable, "-m", "stagectl", "diff", "--base", base, "--stack", "mvp",
                                 "--format", "json", "--gitlab-report", str(tmp_path / "plan.json")],
                                cwd=repo, capture_output=True, text=True, timeout=300)
    finally:
        edit_stack(repo, lambda c: c.pop("aistack:budget"))
    assert result.returncode == 3, result.stderr
    (stack,) = json.loads(result.stdout)["stacks"]
    budget = next(g for g in stack["guardrails"] if g["rule"] == "budget")
    assert budget["passed"] is False and "exceeds the budget 0.50 USD" in budget["findings"][0]["message"]
    assert json.loads((tmp_path / "plan.json").read_text()).keys() == {"create", "update", "delete"}


def test_preview_comment_from_pulumi_preview_json():
    bucket = "yandex:index/storageBucket:StorageBucket"
    urn = f"urn:pulumi:mvp::aistack::aistack:storage:ModelStore${bucket}::mvp-data-bucket"
    key_urn = "urn:pulumi:mvp::aistack::yandex:index/kmsSymmetricKey:KmsSymmetricKey::k"
    old = {"type": bucket, "custom": True, "inputs": {"bucket": "b", "tags": {"project": "aistack"},
                                                      "anonymousAccessFlags": {"read": False}}}
    new = {"type": bucket, "custom": True, "inputs": {"bucket": "b", "tags": {"project": "aistack"},
                                                      "anonymousAccessFlags": {"read": True}}}
    document = {"steps": [
        {"op": "update", "urn": urn, "oldState": old, "newState": new, "diffReasons": ["anonymousAccessFlags"]},
        {"op": "create", "urn": key_urn, "newState": {"type": "yandex:index/kmsSymmetricKey:KmsSymmetricKey",
                                                      "custom": True, "inputs": {"name": "k"}}},
    ], "changeSummary": {"update": 1, "create": 1}}
    result = diff.preview_to_diff("mvp", document, root=ROOT)
    assert result.counts == {"create": 1, "update": 1, "delete": 0}
    assert [(c.path, c.before, c.after) for _, cs in result.changed for c in cs] == [
        ("anonymousAccessFlags.read", False, True)]
    assert result.monthly_after - result.monthly_before == pytest.approx(load_price_book()
                                                                         .price("kms.key_version").usd)
    failed = {g.rule.name for g in result.failed_guardrails}
    assert {"bucket-not-public", "bucket-encrypted", "labels-present"} <= failed
    text = diff.render_markdown([result], "the deployed state", preview=True)
    assert text.startswith(diff.PREVIEW_MARKER + "\n### `pulumi preview` by stack")
    assert "- update `yandex:index/storageBucket:StorageBucket` **mvp-data-bucket**" in text
    assert "`anonymousAccessFlags.read`: `false` -> `true`" in text


def test_a_preview_without_its_unchanged_resources_is_refused():
    kind = "yandex:index/kmsSymmetricKey:KmsSymmetricKey"
    state = {"type": kind, "custom": True, "inputs": {"name": "k"}}
    changed = {"op": "create", "urn": f"urn:pulumi:mvp::aistack::{kind}::k2", "newState": state}
    stack = {"op": "same", "urn": "urn:pulumi:mvp::aistack::pulumi:pulumi:Stack::aistack-mvp",
             "oldState": {"type": "pulumi:pulumi:Stack", "custom": False},
             "newState": {"type": "pulumi:pulumi:Stack", "custom": False}}
    same = {"op": "same", "urn": f"urn:pulumi:mvp::aistack::{kind}::k", "oldState": state, "newState": state}
    # what `pulumi preview --json` prints without --show-sames: the root stack only, yet 2 sames counted
    with pytest.raises(diff.DiffError, match=r"lists 1 of its 2 unchanged resources: run `pulumi preview --json "
                                             r"--show-sames`"):
        diff.preview_to_diff("mvp", {"steps": [stack, changed], "changeSummary": {"create": 1, "same": 2}}, root=ROOT)
    whole = diff.preview_to_diff("mvp", {"steps": [stack, same, changed], "changeSummary": {"create": 1, "same": 2}},
                                 root=ROOT)
    assert whole.counts == {"create": 1, "update": 0, "delete": 0}
    assert whole.monthly_before > 0 and whole.monthly_after > whole.monthly_before
