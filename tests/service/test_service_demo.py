"""The service part of ``make demo``: build if missing, serve, predict a held-out digit, stop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stagectl.demo_service import run_service_demo


def test_demo_serves_a_prediction_and_stops_cleanly(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(demo_model, tmp_path / "models" / "digits")  # as `stagectl model build` leaves it
    monkeypatch.chdir(tmp_path)
    assert run_service_demo() == 0
    out = capsys.readouterr().out
    assert "service ready on http://127.0.0.1:" in out
    assert "HTTP 200" in out
    assert '"label": 2' in out and "true label 2" in out  # held-out digit #0 is a 2
    assert "(correct); service stopped cleanly (exit 0)" in out
    assert "prediction log: 1 record(s)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # nothing else left behind
