"""The README's main job: scenarios built by the core, diagnosed by llava-doctor, twins clean."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main


@pytest.mark.slow
def test_demo_catches_the_broken_scenarios_and_passes_their_twins(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "-q",
                                       "--only", "zero3-save", "--only", "frozen-encoder-export",
                                       "--only", "tokenization-mismatch", "--only", "llm-not-frozen"])
    rows = {tuple(line.split()[:2]): line.split() for line in result.output.splitlines()
            if line.split()[:1] and line.split()[0] in {"zero3-save", "frozen-encoder-export", "tokenization-mismatch", "llm-not-frozen"}}
    for name in ("zero3-save", "frozen-encoder-export", "tokenization-mismatch", "llm-not-frozen"):
        assert rows[name, "broken"][3] == "CAUGHT", result.output
        assert rows[name, "fixed"][3] == "clean", result.output
    assert "4 of 4 checked failures caught, 0 false alarm(s)" in result.output
    assert result.exit_code == 0
    facts = json.loads((out / "zero3-save" / "broken" / "scenario.json").read_text())
    assert facts["scenario"] == "zero3-save" and (out / "zero3-save" / "broken" / "README.txt").is_file()
