"""``kith demo``, the quick start's main job: every step runs and is printed, and its final
search finds none of the sent text in the relay's files or the vaults."""

from __future__ import annotations

import re

import pytest

from kith.cli.main import main


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_demo_runs_every_step(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert main(["demo", "--store", store]) == 0
    out, err = capsys.readouterr()
    steps = re.findall(r"^\[(\d)/9\]", out, flags=re.MULTILINE)
    assert steps == [str(i) for i in range(1, 10)], out
    assert "DEMO ONLY" in out
    assert "both contacts are verified" in out
    assert "a delivery receipt came back" in out
    last = next(line for line in out.splitlines() if line.startswith("[9/9]"))
    assert last.endswith("files searched): none"), last
    assert "Traceback" not in err
