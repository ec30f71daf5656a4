"""`checks/` ships as `llava_doctor.checks` from an editable install and from a built wheel."""
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
    )
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split("\n")
    assert str(env_dir) in out[0] and "site-packages/llava_doctor/checks" in out[0], out[0]
    assert out[1].split() == list(all_checks())
    assert out[2] == "False"
    assert str(env_dir) in out[3] and Path(out[3]).is_file(), out[3]  # fixtures/ ships as llava_doctor.fixtures
    cli = subprocess.run([str(env_dir / "bin" / "llava-doctor"), "rules"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and all(code in cli.stdout for code in all_checks())
