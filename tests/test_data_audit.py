"""The tokenization audit (LD101-LD105) on the real tokenizers in ../shared/fixtures/tokenizers."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_doctor.templates.audit import audit_conversations
from llava_doctor.templates.recipes import get_recipe, setup_tokenizer, shared_setup
from llava_doctor.templates.tokenize import IGNORE_INDEX

pytestmark = pytest.mark.tokenizers
_LOADED: dict[str, object] = {}


@pytest.fixture(scope="module")
def load(tokenizers_dir):
    from transformers import AutoTokenizer

    def get(name):
        if name not in _LOADED:
            _LOADED[name] = AutoTokenizer.from_pretrained(str(tokenizers_dir / name), local_files_only=True)
        return _LOADED[name]

    return get


def record(sample_id, answers, question="What is this?", image=True):
    turns = []
    for k, answer in enumerate(answers):
        turns += [{"from": "human", "value": ("<image>\n" if image and k == 0 else "") + question},
                  {"from": "gpt", "value": answer}]
    out = {"id": sample_id, "conversations": turns}
    if image:
        out["image"] = f"{sample_id}.jpg"
    return out


ORDINARY = [
    record("one", ["A cat."]),
    record("two", ["A cat sitting on a mat.", "It is black and white."]),
    record("three", ["Yes.", "No, it is a dog.", "Probably in a park."], question="Tell me more."),
    record("text", ["Paris is the capital of France."], question="Capital of France?", image=False),
]

# template on the tokenizer it was written for, and the training code under which they agree
MATCHING = [
    ("vicuna-7b-v1.5", "v1", "llava"),
    ("vicuna-7b-v1.5", "vicuna_v1", "llava-next"),
    ("vicuna-7b-v1.5-legacy", "llava_v1", "llava"),
    ("vicuna-7b-v1.5-legacy", "v1", "llava-1.5"),
    ("vicuna-7b-v1.5", "v0", "llava"),
    ("Llama-2-7b-chat-hf", "llava_llama_2", "llava"),
    ("Mistral-7B-Instruct-v0.2", "mistral_instruct", "llava"),
    ("mpt-7b-chat", "mpt", "llava-1.5"),
    ("mpt-7b-chat", "chatml_direct", "llava-1.5"),
    ("Qwen2-7B-Instruct", "qwen_1_5", "llava-next"),
    ("Qwen2-7B-Instruct", "qwen_2", "llava-next"),
    ("Llama-3.1-8B-Instruct", "llava_llama_3", "llava-next"),
]


@pytest.mark.parametrize("tokenizer,template,recipe", MATCHING, ids=[f"{t}-{m}-{r}" for t, m, r in MATCHING])
def test_matching_template_is_clean_on_ordinary_data(load, tokenizer, template, recipe):
    report = audit_conversations(ORDINARY, load(tokenizer), template, recipe=recipe)
    assert not report.findings, [f.message for f in report.findings]
    data = report.stats["data"]
    assert data["dropped"] == data["crashed"] == data["drifted"] == 0
    assert data["supervised_tokens"] > 0


def test_plain_pretraining_pairs_are_clean(load):
    pairs = [{"id": "p", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                              {"from": "gpt", "value": "A cat on a mat."}]}]
    report = audit_conversations(pairs, load("vicuna-7b-v1.5"), "plain")
    assert not report.findings, [f.message for f in report.findings]


def _messages(report, code):
    return [f.message for f in report.by_code(code)]


def test_v15_code_with_new_tokenizers_drops_multi_round_samples(load):
    # haotian-liu/LLaVA#661: v1.5 code, tokenizers >= 0.14, legacy=False: round 2 counts one token too many.
    report = audit_conversations(ORDINARY, load("vicuna-7b-v1.5"), "v1", recipe="llava-1.5")
    by_sample = {f.extra["sample"]: f for f in report.by_code("LD101")}
    assert set(by_sample) == {"two", "three"}
    two = by_sample["two"]
    assert "`WARNING: tokenization mismatch: 74 vs. 73. (ignored)`" in two.message
    assert two.extra["round"] == 2 and "legacy=False" in two.message
    assert (two.extra["cur_len"], two.extra["total_len"]) == (74, 73)
    assert "mismatch: 89 vs. 87." in by_sample["three"].message


def test_v1_on_llama3_and_qwen_is_a_wrong_template(load):
    for name, pad in (("Meta-Llama-3-8B-Instruct", "<|end_of_text|>"), ("Qwen2-7B-Instruct", "<|endoftext|>")):
        report = audit_conversations(ORDINARY, load(name), "v1", recipe="llava-1.5", pad_token=pad)
        assert len(report.by_code("LD101")) == 4
        assert all("wrong template: its separator '</s>' is 3 tokens" in m for m in _messages(report, "LD101"))
        assert report.by_code("LD103")
    qwen = audit_conversations([record("a", ["A cat."])], load("Qwen2-7B-Instruct"), "v1", recipe="llava-1.5",
                               pad_token="<|endoftext|>")
    assert "mismatch: 45 vs. 46." in qwen.by_code("LD101")[0].message


def test_v1_with_llava_main_and_qwen_crashes_instead(load):
    # LLaVA main sets pad = unk = None for Qwen; with LLaVA-NeXT the pad stays and `tokenizer.legacy` is read.
    main = audit_conversations(ORDINARY[:2], load("Qwen2-7B-Instruct"), "v1", recipe="llava")
    assert all("pad_token is None" in m for m in _messages(main, "LD101"))
    nxt = audit_conversations(ORDINARY[1:2], load("Qwen2-7B-Instruct"), "v1", recipe="llava-next")
    assert "AttributeError: Qwen2Tokenizer has no attribute 'legacy'" in _messages(nxt, "LD101")[0]
    fit = nxt.by_code("LD103")[0]
    assert {"qwen_1_5", "qwen_2"} <= set(fit.extra["suggestions"])


def test_tinyllama_with_an_im_end_separator(load):
    report = audit_conversations(ORDINARY[:2], load("TinyLlama-1.1B-Chat-v1.0"), "mpt", recipe="llava")
    messages = _messages(report, "LD101")
    assert len(messages) == 2 and all("'<|im_end|>' is 7 tokens" in m for m in messages)
    assert "v1" in report.by_code("LD103")[0].extra["suggestions"]


def test_pad_equal_to_eos_changes_every_count(load):
    report = audit_conversations(ORDINARY, load("TinyLlama-1.1B-Chat-v1.0"), "v1", pad_token="</s>")
    found = {f.extra["sample"]: (f.extra["cur_len"], f.extra["total_len"]) for f in report.by_code("LD101")}
    assert found["one"][0] - found["one"][1] == 1 and found["three"][0] - found["three"][1] == 3
    assert all("pad equal to eos" in m for m in _messages(report, "LD101"))


def test_mpt_arithmetic_of_llava_main_relies_on_a_bos(load):
    report = audit_conversations(ORDINARY[:2], load("mpt-7b-chat"), "mpt", recipe="llava")
    assert len(report.by_code("LD101")) == 2
    assert all("BOS assumption" in m for m in _messages(report, "LD101"))


def test_qwen3_breaks_llava_next_preprocess_qwen(load):
    report = audit_conversations(ORDINARY[:1], load("Qwen3-8B"), "qwen_2", recipe="llava-next")
    assert "unpacks 13 ids, not 2" in _messages(report, "LD101")[0]


def test_llama3_chat_template_appends_a_header_that_gets_trained(load):
    # This Meta-Llama-3 template ends every per-turn call with an assistant header: LLaVA-NeXT trains on it.
    report = audit_conversations(ORDINARY[:1], load("Meta-Llama-3-8B-Instruct"), "llava_llama_3", recipe="llava-next")
    drift = report.by_code("LD102")
    assert drift and "prompt token learned" in drift[0].message and "'assistant'" in drift[0].message


EDGES = [
    record("empty", [""]),
    record("eos_inside", ["A cat </s> with a hat.", "Yes."]),
    record("role_inside", ["Say ASSISTANT: hi", "ok"], question="Type USER: then"),
    record("trailing", ["A cat.  ", "Black. "]),
    record("double_newline", ["Line one.\n\nLine two.", "x\n\n"]),
    record("unicode", ["猫です 🐱 café", "ü"]),
    record("no_image", ["A cat."], image=False),
    {**record("two_images", ["Two cats."]), "image": ["a.jpg", "b.jpg"]},
    {**record("missing_placeholder", ["A cat."], question="What is this?", image=False), "image": "x.jpg"},
]
EDGES[7]["conversations"][0]["value"] = "<image>\n<image>\nCompare."


def test_edge_cases_on_vicuna(load):
    report = audit_conversations(EDGES, load("vicuna-7b-v1.5"), "v1")
    flagged = {(f.code, f.extra.get("sample")) for f in report.findings}
    assert ("LD101", "empty") in flagged and ("LD104", "empty") in flagged
    assert "empty answer" in report.by_code("LD101")[[f.extra["sample"] for f in report.by_code("LD101")].index("empty")].message
    assert ("LD101", "eos_inside") in flagged and ("LD101", "role_inside") in flagged
    for name in ("trailing", "double_newline", "unicode", "no_image", "two_images"):
        assert ("LD101", name) not in flagged and ("LD102", name) not in flagged, name
    assert ("LD105", "missing_placeholder") in flagged
    assert ("LD105", "two_images") not in flagged
    messages = " ".join(_messages(report, "LD101"))
    assert "separator text '</s>' inside a message" in messages and "'ASSISTANT: ' inside a message" in messages


def test_edge_cases_on_qwen_next(load):
    report = audit_conversations(EDGES, load("Qwen2-7B-Instruct"), "qwen_2", recipe="llava-next")
    flagged = {(f.code, f.extra.get("sample")) for f in report.findings}
    assert flagged == {("LD104", "empty"), ("LD105", "missing_placeholder")}, flagged


def test_truncation_at_model_max_length(load):
    long = record("long", ["A cat. " * 10], question="Describe " * 600)
    report = audit_conversations([long, record("short", ["A cat."])], load("vicuna-7b-v1.5"), "v1",
                                 max_length=1024)
    found = report.by_code("LD104")
    assert [f.extra["sample"] for f in found] == ["long"]
    assert "model_max_length 1024" in found[0].message and found[0].extra["tokenized"] > 1024


def test_setup_tokenizer_copies_and_follows_train_py(load):
    qwen = load("Qwen2-7B-Instruct")
    main = setup_tokenizer(qwen, "llava", "v1")
    assert main.pad_token is None and qwen.pad_token == "<|endoftext|>"
    assert shared_setup(qwen, "llava-next", "qwen_2").pad_token == "<|endoftext|>"
    vicuna = load("vicuna-7b-v1.5")
    assert setup_tokenizer(vicuna, "llava", "v1").pad_token == "<unk>"
    assert setup_tokenizer(vicuna, "llava", "v0").pad_token == "[PAD]" and vicuna.pad_token is None


words = st.lists(st.sampled_from(["A", "cat", "dog", "black", "and", "white", "yes", ".", ",", "ü", "\n"]),
                 min_size=1, max_size=6).map(" ".join)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=st.lists(words, min_size=1, max_size=3), image=st.booleans(),
       name=st.sampled_from(["vicuna-7b-v1.5", "vicuna-7b-v1.5-legacy", "mpt-7b-chat", "Llama-2-7b-chat-hf"]),
       codebase=st.sampled_from(["llava-1.5", "llava", "llava-next"]))
def test_labels_agree_with_the_recipes_own_verdict(load, answers, image, name, codebase):
    template = {"mpt-7b-chat": "mpt", "Llama-2-7b-chat-hf": "llava_llama_2"}.get(name, "v1")
    tokenizer = shared_setup(load(name), codebase, template)
    result = get_recipe(codebase).preprocess(record("h", answers, image=image)["conversations"], tokenizer, template,
                                             has_image=image)
    assert result.crash is None and len(result.labels) == len(result.input_ids)
    if result.mismatch is not None:
        assert set(result.labels) == {IGNORE_INDEX}
        assert result.mismatch == (result.cur_len, result.total_len)
        return
    expected = list(result.input_ids)
    start = result.rounds[0].start if result.rounds else 0
    for k in range(start):
        expected[k] = IGNORE_INDEX
    for r in result.rounds:
        for k in range(r.start, min(len(expected), r.start + max(0, r.instruction_len))):
            expected[k] = IGNORE_INDEX
    for k in range(result.cur_len, len(expected)):
        expected[k] = IGNORE_INDEX
    assert result.labels == expected


@pytest.mark.slow
def test_workers_give_the_same_report(load):
    data = [record(f"s{k}", ["A cat.", "Black."] if k % 3 else ["Yes."]) for k in range(1200)]
    one = audit_conversations(data, load("vicuna-7b-v1.5"), "v1", recipe="llava-1.5")
    two = audit_conversations(data, load("vicuna-7b-v1.5"), "v1", recipe="llava-1.5", workers=2)
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
    assert one.stats["data"]["dropped"] == 800


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_shards_and_rank0_writes(tmp_path, tokenizers_dir):
    import json
    import subprocess
    import sys

    data = [record(f"s{k}", ["A cat.", "Black."] if k % 2 else ["Yes."]) for k in range(40)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "llava_doctor", "data", str(path), "--tokenizer", str(tokenizers_dir / "vicuna-7b-v1.5"),
           "--template", "v1", "--recipe", "llava-1.5", "--format", "json", "--output", str(out), "--exit-zero"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    samples = sorted(f["sample"] for f in report["findings"] if f["code"] == "LD101")
    assert samples == sorted(f"s{k}" for k in range(40) if k % 2)
