"""The README's main job: scenarios built by the core, diagnosed by llava-doctor, twins clean."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main


NAMES = ("zero3-save", "frozen-encoder-export", "tokenization-mismatch", "llm-not-frozen", "lora-tunable-parts")


@pytest.mark.slow
def test_demo_catches_the_broken_scenarios_and_passes_their_twins(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "-q", *(a for name in NAMES for a in ("--only", name))])
    rows = {tuple(line.split()[:2]): line.split() for line in result.output.splitlines()
            if line.split()[:1] and line.split()[0] in NAMES}
    for name in NAMES:
        assert rows[name, "broken"][3] == "CAUGHT", result.output
        assert rows[name, "fixed"][3] == "clean", result.output
    assert "5 of 5 checked failures caught, 0 false alarm(s)" in result.output
    assert result.exit_code == 0
    facts = json.loads((out / "zero3-save" / "broken" / "scenario.json").read_text())
    assert facts["scenario"] == "zero3-save" and (out / "zero3-save" / "broken" / "README.txt").is_file()


def test_scenario_commands_split_and_verdicts_follow_the_codes():
    from llava_doctor.cli.demo import CommandRun, split_commands, verdict

    assert split_commands("llava-doctor audit a ; llava-doctor generate 'b c' --image d   # note") == \
        [["llava-doctor", "audit", "a"], ["llava-doctor", "generate", "b c", "--image", "d"]]
    codes = ("LD304", "LD504")
    fired, other, clean, broken = (CommandRun("x", 1, ["LD304"]), CommandRun("x", 1, ["LD202"]), CommandRun("x", 0),
                                   CommandRun("x", 2))
    assert verdict("broken", codes, [clean, fired]) == "CAUGHT"
    assert verdict("broken", codes, [other]) == "missed"  # exit 1 on someone else's code is not a catch
    assert verdict("broken", codes, [broken]) == "error"
    assert verdict("fixed", codes, [clean, clean]) == "clean"
    assert verdict("fixed", codes, [clean, fired]) == verdict("fixed", codes, [other]) == "FALSE ALARM"
    assert verdict("fixed", codes, [CommandRun("x", None)]) == "no check yet"


@pytest.mark.slow
def test_demo_generation_scenarios_show_the_codes_that_fired(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--only", "delay-load", "--only", "nan-logits"])
    rows = {tuple(line.split()[:2]): line.split() for line in result.output.splitlines()
            if line.split()[:1] and line.split()[0] in {"delay-load", "nan-logits"} and len(line.split()) > 5}
    assert rows["nan-logits", "broken"][3] == "CAUGHT" and rows["nan-logits", "broken"][5] == "LD502,LD503", result.output
    assert rows["delay-load", "broken"][3] == "CAUGHT" and "LD304" in rows["delay-load", "broken"][5], result.output
    for name in ("delay-load", "nan-logits"):
        assert rows[name, "fixed"][3] == "clean" and rows[name, "fixed"][5] == "-", result.output
    assert "$ llava-doctor inspect" in result.output and "2 of 2 checked failures caught, 0 false alarm(s)" in result.output
    assert result.exit_code == 0


def test_demo_says_a_scenario_was_not_built_and_never_counts_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--only", "lora-tunable-parts"])
    assert "not built: scenario lora-tunable-parts needs peft: pip install 'llava-doctor[lora]'" in result.output
    assert "0 of 1 checked failures caught" in result.output and "CAUGHT" not in result.output
    assert result.exit_code == 1
