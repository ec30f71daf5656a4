"""`checks/` ships as `llava_doctor.checks` from an editable install and from a built wheel; the declared
dependencies keep the pins of the training environments users install into."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import llava_doctor.checks
from llava_doctor.registry import all_checks

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, f"{commands[1]!r} is not what .ci/run runs"


# What the training environments pin (haotian-liu/LLaVA's pyproject.toml at c121f043, its `train` extra included;
# LLaVA-VL/LLaVA-NeXT's `train` extra at df179663, its numbered pins): installing llava-doctor there must change none.
# .ci/run proves it with pip itself in a LLaVA environment; this is the same question asked of the declared floors.
TRAINING_PINS = {
    "haotian-liu/LLaVA": {"python": "3.10", "torch": "2.1.2", "transformers": "4.37.2", "tokenizers": "0.15.1",
                          "sentencepiece": "0.1.99", "deepspeed": "0.12.6", "accelerate": "0.21.0"},
    "LLaVA-VL/LLaVA-NeXT": {"python": "3.10", "torch": "2.1.2", "tokenizers": "0.15.2", "sentencepiece": "0.1.99",
                            "deepspeed": "0.14.4", "numpy": "1.26.1"},
}


def _project() -> dict:
    try:
        import tomllib
    except ImportError:  # python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.mark.parametrize("environment", sorted(TRAINING_PINS))
def test_declared_dependencies_keep_the_pins_of_the_training_environments(environment):
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    project, pins = _project(), TRAINING_PINS[environment]
    assert SpecifierSet(project["requires-python"]).contains(pins["python"])
    requirements = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    assert {"torch", "tokenizers", "sentencepiece", "deepspeed"} <= set(requirements)  # the question is asked
    refused = [f"{requirements[name]} refuses {name}=={version}" for name, version in pins.items()
               if name in requirements and not requirements[name].specifier.contains(version, prereleases=True)]
    assert not refused, f"installing llava-doctor would change {environment}'s pins: {refused}"


def test_checks_come_from_the_source_folder_in_this_install():
    assert Path(llava_doctor.checks.__file__).resolve().parent == (ROOT / "checks").resolve()
    assert all_checks()


@pytest.mark.slow
def test_built_wheel_ships_the_checks(tmp_path):
    wheel_dir = tmp_path / "wheel"
    build_dir_existed = (ROOT / "build").exists()
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
            check=True, capture_output=True, text=True,
        )
    finally:  # setuptools builds in ROOT/build; leave the source tree as it was
        if not build_dir_existed:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    wheel = next(wheel_dir.glob("llava_doctor-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    probe = (
        "import llava_doctor, llava_doctor.checks, sys\n"
        "from llava_doctor.registry import all_checks\n"
        "print(llava_doctor.checks.__file__)\n"
        "print(' '.join(all_checks()))\n"
        "print('checks' in sys.modules)\n"
        "from llava_doctor.core.tokenizer import ASSET_DIR\n"
        "print(ASSET_DIR / 'tokenizer.json')\n"
        "from llava_doctor.docs import reference_path, reference_uri\n"
        "print(reference_path())\n"
        "print(reference_uri('LD201'))\n"
    )
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split("\n")
    assert str(env_dir) in out[0] and "site-packages/llava_doctor/checks" in out[0], out[0]
    assert out[1].split() == list(all_checks())
    assert out[2] == "False"
    assert str(env_dir) in out[3] and Path(out[3]).is_file(), out[3]  # fixtures/ ships as llava_doctor.fixtures
    # docs/checks.md ships inside the package: the documentation SARIF's helpUri names exists outside a checkout
    shipped = Path(out[4])
    assert str(env_dir) in out[4] and shipped.name == "checks.md" and shipped.parent.name == "reference", out[4]
    assert shipped.read_text(encoding="utf-8") == (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    assert out[5] == f"{shipped.resolve().as_uri()}#ld201"
    cli = subprocess.run([str(env_dir / "bin" / "llava-doctor"), "rules"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and all(code in cli.stdout for code in all_checks())
    explained = subprocess.run([str(env_dir / "bin" / "llava-doctor"), "explain", "LD201"], cwd=tmp_path,
                               capture_output=True, text=True)
    assert explained.returncode == 0 and "Why:" in explained.stdout and f"Reference: {out[5]}" in explained.stdout
