from __future__ import annotations

import pytest

from llava_doctor.config import Settings, known_values, load_settings
from llava_doctor.findings import InputError, Severity
from llava_doctor.registry import all_checks


def _write(tmp_path, body: str):
    (tmp_path / "pyproject.toml").write_text(body, encoding="utf-8")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    return sub


def test_settings_are_found_upwards_and_parsed(tmp_path):
    sub = _write(tmp_path, """
[tool.llava-doctor]
select = ["LD2"]
ignore = ["ld205"]
severity = { LD208 = "error" }
fail-on = "warning"
template = "v1"
deep = true
""")
    s = load_settings(sub)
    assert s.select == ("LD2",) and s.ignore == ("LD205",)
    assert s.severity == {"LD208": Severity.ERROR} and s.fail_on == Severity.WARNING
    assert s.template == "v1" and s.deep is True and s.source.endswith("pyproject.toml")


def test_command_line_wins(tmp_path):
    s = load_settings(_write(tmp_path, '[tool.llava-doctor]\nselect = ["LD2"]\nfail-on = "info"\n'))
    merged = s.merged(select=("LD101",), fail_on=None, format="json")
    assert merged.select == ("LD101",) and merged.fail_on == Severity.INFO and merged.format == "json"


def test_no_table_gives_defaults(tmp_path):
    assert load_settings(_write(tmp_path, "[project]\nname='x'\n")) == Settings()


@pytest.mark.parametrize("body", [
    "[tool.llava-doctor]\nbogus = 1\n",
    "[tool.llava-doctor]\nfail-on = 'fatal'\n",
    "[tool.llava-doctor]\nselect = 3\n",
    "[tool.llava-doctor]\ndeep = 'yes'\n",
    "[tool.llava-doctor\n",
])
def test_bad_settings_are_one_line_input_errors(tmp_path, body):
    with pytest.raises(InputError) as err:
        load_settings(_write(tmp_path, body))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("body, expected", [
    ("select = ['LD2', 'LD9999']", "select: unknown code or prefix 'LD9999'"),
    ("stage = 'fine-tune'", "did you mean finetune?"),
    ("template = 'llava-v1'", "did you mean llava_v1?"),
    ("recipe = 'llava_next'", "did you mean llava-next?"),
    ("format = 'junitxml'", "did you mean junit?"),
    ("format = 3", "unknown format 3"),
    ("severity = { LD2 = 'loud' }", "severity.LD2"),
])
def test_unknown_values_are_one_line_errors_naming_the_closest(tmp_path, body, expected):
    with pytest.raises(InputError) as err:
        load_settings(_write(tmp_path, f"[tool.llava-doctor]\n{body}\n"))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_severity_prefixes_expand_to_codes_and_the_most_specific_wins(tmp_path):
    s = load_settings(_write(tmp_path, "[tool.llava-doctor]\nseverity = { LD205 = 'error', LD2 = 'info', ALL = 'warning' }\n"))
    assert s.severity["LD205"] == Severity.ERROR and s.severity["LD201"] == Severity.INFO
    assert s.severity["LD101"] == Severity.WARNING and set(s.severity) == set(all_checks())


def test_known_values_follow_what_is_installed():
    assert known_values("stage") == ("pretrain", "finetune", "lora")
    assert {"text", "json", "junit", "sarif", "github"} <= set(known_values("format"))
    assert "v1" in known_values("template") and "llava-next" in known_values("recipe")
