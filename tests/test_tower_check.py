"""LD304 on the real delay-load scenario: a random frozen tower is caught, the twin that loaded the base is clean."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from llava_doctor import reproduce  # noqa: E402
from llava_doctor.api import audit  # noqa: E402
from llava_doctor.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def delay_load(tmp_path_factory):
    """(broken, fixed) scenario results, built once for this module."""
    root = tmp_path_factory.mktemp("delay-load")
    return tuple(reproduce.build("delay-load", root / variant, fixed=fixed)
                 for variant, fixed in (("broken", False), ("fixed", True)))


def ld304_messages(result) -> list[str]:
    return [f.message for f in audit([result.out_dir / "loaded"], deep=True, select=("LD304",)).by_code("LD304")]


def test_random_tower_is_reported_once_naming_the_base(delay_load):
    broken = delay_load[0]
    assert broken.facts["tower_equals_base"] is False
    messages = ld304_messages(broken)
    assert len(messages) == 1, messages
    base = json.loads((broken.out_dir / "loaded" / "config.json").read_text())["mm_vision_tower"]
    assert messages[0].startswith("vision_tower: ") and f"differ from the base tower at {base}" in messages[0]
    assert "unfreeze_mm_vision_tower false" in messages[0] and "delay_load" in messages[0]


def test_twin_that_loaded_the_base_tower_is_clean(delay_load):
    fixed = delay_load[1]
    assert fixed.facts["tower_equals_base"] is True
    assert ld304_messages(fixed) == []


def test_needs_deep(delay_load):
    assert audit([delay_load[0].out_dir / "loaded"], select=("LD304",)).by_code("LD304") == []


def test_hub_reference_is_not_guessed(delay_load, tmp_path):
    """mm_vision_tower that names no local folder: nothing to compare, no finding."""
    import shutil

    copy = tmp_path / "loaded"
    shutil.copytree(delay_load[0].out_dir / "loaded", copy)
    config = json.loads((copy / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (copy / "config.json").write_text(json.dumps(config))
    assert audit([copy], deep=True, select=("LD304",)).by_code("LD304") == []


def test_demo_row_flips_to_caught(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "-q", "--only", "delay-load"])
    rows = {line.split()[1]: line.split() for line in result.output.splitlines() if line.startswith("delay-load ")}
    assert rows["broken"][3] == "CAUGHT", result.output
    assert rows["fixed"][3] == "clean", result.output
