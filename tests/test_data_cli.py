"""`llava-doctor data`: exit codes, JSON fields, --show, --suggest, unreadable inputs."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main


def _records():
    def rec(i, answers, image=True):
        turns = []
        for k, a in enumerate(answers):
            turns += [{"from": "human", "value": ("<image>\n" if image and k == 0 else "") + "What is this?"},
                      {"from": "gpt", "value": a}]
        out = {"id": i, "conversations": turns}
        if image:
            out["image"] = f"{i}.jpg"
        return out

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
    assert "summary per template:" in result.output and "v1 (llava)" in result.output


@pytest.mark.tokenizers
def test_json_findings_carry_sample_and_lengths(data_file, tokenizers_dir):
    result = run(data_file, "--tokenizer", tokenizers_dir / "TinyLlama-1.1B-Chat-v1.0", "--template", "v1",
                 "--pad-token", "</s>", "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    ld101 = [f for f in report["findings"] if f["code"] == "LD101"]
    assert {f["sample"] for f in ld101} == {"one", "two", "text"}
    two = next(f for f in ld101 if f["sample"] == "two")
    assert (two["cur_len"], two["total_len"]) == (two["observed"], two["expected"])
    assert f"tokenization mismatch: {two['cur_len']} vs. {two['total_len']}." in two["message"]


@pytest.mark.tokenizers
def test_show_prints_token_label_view_and_suggest_lists_templates(data_file, tokenizers_dir):
    result = run(data_file, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1",
                 "--recipe", "llava-1.5", "--show", "1", "--suggest", "--exit-zero")
    assert result.exit_code == 0, result.output
    assert "sample two (v1, preprocess_v1): WARNING: tokenization mismatch: 66 vs. 65. (ignored)" in result.output
    assert "@<image>(-100,-200)" in result.output and "-</s>(-100,2)" in result.output
    assert "templates that fit: " in result.output and "llava_llama_2" in result.output


@pytest.mark.tokenizers
def test_jsonl_is_read_too(tmp_path, tokenizers_dir):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    result = run(path, "--tokenizer", tokenizers_dir / "vicuna-7b-v1.5", "--template", "v1", "--format", "json")
    assert result.exit_code == 0, result.output


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
