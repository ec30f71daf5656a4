"""`llava-doctor data`: exit codes, grouped findings, JSON records, --show, --suggest, unreadable inputs."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main


def rec(i, answers, image=True):
    turns = []
    for k, a in enumerate(answers):
        turns += [{"from": "human", "value": ("<image>\n" if image and k == 0 else "") + "What is this?"},
                  {"from": "gpt", "value": a}]
    out = {"id": i, "conversations": turns}
    if image:
        out["image"] = f"{i}.jpg"
    return out


def _records():
    return [rec("one", ["A cat."]), rec("two", ["A cat.", "Black."]), rec("text", ["Hi."], image=False)]


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records()))
    return path


def run(*args):
    return CliRunner().invoke(main, ["data", *map(str, args)])


@pytest.mark.tokenizers
def test_clean_dataset_exits_zero_with_summary(data_file, tokenizers_dir):
    result = run(data_file, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1")
    assert result.exit_code == 0, result.output
    assert "summary per set-up:" in result.output and "v1 (llava)" in result.output and "unverified" in result.output


@pytest.mark.tokenizers
def test_json_groups_findings_and_keeps_every_sample(tmp_path, tokenizers_dir):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records() + [rec(f"s{k}", ["A cat.", "Black."]) for k in range(20)]))
    result = run(path, "--tokenizer", tokenizers_dir / "TinyLlama-1.1B-Chat-v1.0", "--template", "v1",
                 "--pad-token", "</s>", "--format", "json", "--select", "LD101")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    (group,) = [f for f in report["findings"] if f["code"] == "LD101"]
    assert group["count"] == 23 and group["samples"] == ["one", "two", "text", "s0", "s1"]
    assert group["records"]["columns"] == ["sample", "index", "observed", "expected", "round", "signature"]
    rows = {row[0]: row for row in group["records"]["rows"]}
    assert len(rows) == 23 and rows["two"][1] == 1
    assert "pad equal to eos" in group["message"] and "23 samples" in group["message"]
    assert report["stats"]["data"]["dropped"] == 23


@pytest.mark.tokenizers
def test_show_takes_a_count_ids_or_indices_and_suggest_explains_unverified(data_file, tokenizers_dir):
    tok = tokenizers_dir / "vicuna-7b-v1.5"
    result = run(data_file, "--tokenizer", tok, "--template", "v1", "--recipe", "llava-1.5", "--show", "1",
                 "--suggest", "--exit-zero")
    assert result.exit_code == 0, result.output
    assert "sample two (v1, preprocess_v1): WARNING: tokenization mismatch: 66 vs. 65. (ignored)" in result.output
    assert "@<image>(-100,-200)" in result.output and "-</s>(-100,2)" in result.output
    assert "set-ups that fit: " in result.output and "--template llava_llama_2" in result.output
    assert "unverified = samples whose tokens the oracle could not line up" in result.output
    # any sample, not only the bad ones: an id and a 0-based index
    result = run(data_file, "--tokenizer", tok, "--template", "v1", "--show", "text,#0", "--exit-zero")
    assert "sample text (v1, preprocess_v1)" in result.output and "sample one (v1, preprocess_v1)" in result.output
    assert "+▁Hi(" in result.output
    result = run(data_file, "--tokenizer", tok, "--template", "v1", "--show", "nope", "--exit-zero")
    assert "--show: no sample nope in" in result.output


@pytest.mark.tokenizers
def test_jsonl_is_read_too(tmp_path, tokenizers_dir):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    result = run(path, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stats"]["data"]["samples"] == 3


@pytest.mark.tokenizers
def test_pad_token_the_tokenizer_lacks_is_a_usage_error(data_file, tokenizers_dir):
    result = run(data_file, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1", "--pad-token", "<pad>")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--pad-token '<pad>' is not a token of this tokenizer" in lines[0]


@pytest.mark.tokenizers
def test_llava_next_loads_no_tokenizer_for_an_unknown_model_name(data_file, tokenizers_dir):
    result = run(data_file, "--tokenizer", tokenizers_dir / "mpt-7b-chat", "--template", "mpt", "--recipe", "llava-next",
                 "--format", "json", "--select", "LD101")
    report = json.loads(result.output)
    crash = [f for f in report["findings"] if "before reading any sample" in f["message"]]
    assert crash and "UnboundLocalError" in crash[0]["message"]
    assert "no loading branch of LLaVA-NeXT's train.py matches" in crash[0]["message"]


@pytest.mark.tokenizers
def test_oversized_sample_is_reported_not_tokenized(tmp_path, tokenizers_dir):
    big = rec("big", ["x " * 600_000])  # a 1.2 MB answer
    path = tmp_path / "data.json"
    path.write_text(json.dumps([big, rec("ok", ["A cat."])]))
    result = run(path, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1", "--format", "json")
    report = json.loads(result.output)
    (found,) = [f for f in report["findings"] if f.get("sample") == "big"]
    assert found["severity"] == "warning" and "not tokenized, not audited" in found["message"]
    assert report["stats"]["data"]["not_audited"] == 1 and result.exit_code == 0


def test_unreadable_inputs_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"id\": 1,")
    missing_tok = tmp_path / "no-tokenizer"
    result = run(bad, "--tokenizer", missing_tok, "--template", "v1")
    assert result.exit_code == 2 and "invalid JSON at line 1" in result.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_records()))
    result = run(good, "--tokenizer", missing_tok, "--template", "v1")
    assert result.exit_code == 2 and "tokenizer directory not found" in result.output
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    result = run(good, "--tokenizer", empty_dir, "--template", "v1")
    assert result.exit_code == 2 and "cannot load a tokenizer" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_template_is_exit_2(tmp_path):
    from llava_doctor.templates.examples import tiny_tokenizer

    good = tmp_path / "good.json"
    good.write_text(json.dumps(_records()))
    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok_dir)
    result = run(good, "--tokenizer", tok_dir, "--template", "nope")
    assert result.exit_code == 2 and "unknown template 'nope'" in result.output
    result = run(good, "--tokenizer", tok_dir, "--template", "v1", "--format", "json", "--select", "LD105")
    assert result.exit_code == 0, result.output
