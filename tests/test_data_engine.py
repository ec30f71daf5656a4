"""The audit's derived round lengths against the exact path (every piece tokenized on its own), and
the streaming reader's bounds.

The golden suite proves both paths equal to the real training code on its corpus
(test_recipe_golden.py); here hypothesis searches for texts where the derivation would differ."""
from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_doctor.artifacts.dataset import OversizedRecord, iter_records, parse_records
from llava_doctor.findings import InputError

PIECES = ["a", "cat", "Black", " ", "  ", "\n", "\n\n", ".", ",", ":", "?", "é", "猫", "🐱", "'s", "12", "\t",
          "</s>", "<s>", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "USER", "ASSISTANT", "[/INST]",
          "<image>", "<unk>"]
text = st.lists(st.sampled_from(PIECES), min_size=0, max_size=12).map("".join)
conversation = st.lists(st.tuples(text, text), min_size=1, max_size=3)
SETUPS = [("vicuna-7b-v1.5", "v1", "llava"), ("vicuna-7b-v1.5-legacy", "llava_llama_2", "llava-1.5"),
          ("Qwen2-7B-Instruct", "chatml_direct", "llava-1.5"), ("mpt-7b-chat", "mpt", "llava-next"),
          ("Llama-3.1-8B-Instruct", "v1", "llava-next"), ("Mistral-7B-Instruct-v0.3", "mistral_instruct", "llava")]


@pytest.fixture(scope="module")
def configured(tokenizers_dir):
    from llava_doctor.artifacts.dataset import load_tokenizer
    from llava_doctor.templates.recipes import shared_setup

    cache = {}

    def get(name, template, recipe):
        key = (name, template, recipe)
        if key not in cache:
            base = load_tokenizer(tokenizers_dir / name, recipe, model_path=name)
            pad = None if base.unk_token is not None or recipe == "llava-next" else (base.pad_token or base.eos_token)
            cache[key] = shared_setup(base, recipe, template, pad)
        return cache[key]

    return get


@pytest.mark.tokenizers
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(conversation, min_size=1, max_size=4), setup=st.sampled_from(SETUPS), image=st.booleans())
def test_derived_lengths_equal_the_exact_path(configured, turns, setup, image):
    from llava_doctor.templates.analysis import recipe_results
    from llava_doctor.templates.tokenize import Encoder

    name, template, recipe = setup
    tok = configured(name, template, recipe)
    records = []
    for k, pairs in enumerate(turns):
        convo = []
        for q, a in pairs:
            convo += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        records.append({"id": str(k), "conversations": convo, **({"image": "x.jpg"} if image else {})})
    samples, _ = parse_records(records)
    fast = recipe_results(samples, tok, template, recipe, encoder=Encoder(tok))
    exact = recipe_results(samples, tok, template, recipe, encoder=Encoder(tok, derive=False))
    for a, b in zip(fast, exact):
        assert (a.crash, a.mismatch, a.round_lengths, [r.instruction_len for r in a.rounds], a.input_ids, a.labels) == \
               (b.crash, b.mismatch, b.round_lengths, [r.instruction_len for r in b.rounds], b.input_ids, b.labels)


@pytest.mark.tokenizers
def test_the_verifier_switches_to_the_exact_path_when_disproved(configured, monkeypatch):
    """A derivation that goes wrong is caught on the verified samples and the run goes on exactly."""
    from llava_doctor.templates import tokenize
    from llava_doctor.templates.audit import audit_conversations

    tok = configured("vicuna-7b-v1.5", "v1", "llava")
    data = [{"id": str(k), "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "And?"}, {"from": "gpt", "value": "Black."}]} for k in range(20)]
    clean = audit_conversations(data, tok.base, "v1")
    assert not clean.findings and clean.stats["data"]["lengths"] == "derived"
    assert clean.stats["data"]["verified_samples"] == 20
    original = tokenize.PromptTokens._derived
    monkeypatch.setattr(tokenize.PromptTokens, "_derived",
                        lambda self, a, b: (lambda n: n + 1 if n is not None else None)(original(self, a, b)))
    broken = audit_conversations(data, tok.base, "v1")
    assert not broken.findings, [f.message for f in broken.findings]
    assert broken.stats["data"]["lengths"] == "exact" and "differ from tokenizing each round" in broken.stats["data"]["derivation_disproved"]


@pytest.mark.tokenizers
def test_suggested_set_ups_are_verified_on_the_exact_path(configured, monkeypatch):
    """The set-ups --suggest and LD103 call fitting are judged by what the training code does: a wrong derivation
    (tokenizers 0.15 prepends a `▁` after special tokens where later releases do not) must not make one fit."""
    from llava_doctor.artifacts.dataset import parse_records
    from llava_doctor.templates import tokenize
    from llava_doctor.templates.suggest import fitting_templates

    tok = configured("vicuna-7b-v1.5", "v1", "llava")
    data = [{"id": str(k), "conversations": [
        {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "And?"}, {"from": "gpt", "value": "Black."}]} for k in range(8)]
    samples, _ = parse_records(data)
    truth = {(f.template, f.bad) for f in fitting_templates(samples, tok.base, "llava")}
    original = tokenize.PromptTokens._derived
    monkeypatch.setattr(tokenize.PromptTokens, "_derived",
                        lambda self, a, b: (lambda n: n + 1 if n is not None else None)(original(self, a, b)))
    assert {(f.template, f.bad) for f in fitting_templates(samples, tok.base, "llava")} == truth


# --- the reader -----------------------------------------------------------------------------------


def _records(n, size=40):
    return [{"id": str(k), "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\n" + "q" * size + '"\\}{[]'}, {"from": "gpt", "value": "é🐱" * size}]}
        for k in range(n)]


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_and_jsonl_stream_to_the_same_records(tmp_path, indent, monkeypatch):
    import llava_doctor.artifacts.dataset as dataset

    monkeypatch.setattr(dataset, "READ_CHUNK", 1000)  # every record straddles a chunk border somewhere
    data = _records(50, size=300)
    array, lines = tmp_path / "a.json", tmp_path / "a.jsonl"
    array.write_text(json.dumps(data, indent=indent, ensure_ascii=indent is None))
    lines.write_text("\n".join(json.dumps(r) for r in data))
    assert [r for _, r in iter_records(array)] == data
    assert [r for _, r in iter_records(lines)] == data
    assert [k for k, _ in iter_records(array)] == list(range(50))


def test_a_large_array_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "big.json"
    with path.open("w") as fh:
        fh.write("[")
        for k, record in enumerate(_records(20_000)):
            fh.write(("," if k else "") + json.dumps(record))
        fh.write("]")
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in iter_records(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000 and size > 6_000_000
    assert peak < 8_000_000, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_a_record_over_the_limit_is_skipped_without_keeping_it(tmp_path):
    data = _records(3)
    data[1]["conversations"][1]["value"] = "x" * 12_000_000
    for path, text in ((tmp_path / "a.json", json.dumps(data)), (tmp_path / "a.jsonl", "\n".join(map(json.dumps, data)))):
        path.write_text(text)
        tracemalloc.start()
        got = list(iter_records(path, max_record_bytes=200_000))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert [type(r).__name__ for _, r in got] == ["dict", "OversizedRecord", "dict"], path.name
        assert got[1][1].size >= 200_000 and peak < 6_000_000, (path.name, peak)  # chunks, not the 12 MB record
        samples, problems = parse_records(got)
        assert [s.id for s in samples] == ["0", "2"] and problems[0].kind == "too large"


def test_a_long_sample_costs_no_tokenization(tmp_path):
    """A 1 MB string becomes one warning; nothing per token is built for it."""
    from llava_doctor.templates.audit import audit_conversations
    from llava_doctor.templates.examples import tiny_tokenizer

    data = _records(2)
    data[0]["conversations"][1]["value"] = "a cat . " * 131_072  # 1 MB of text
    tracemalloc.start()
    report = audit_conversations(data, tiny_tokenizer(), "v1")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    (found,) = [f for f in report.findings if f.extra.get("sample") == "0"]
    assert "over the audit's limit" in found.message and peak < 64_000_000, peak


@pytest.mark.parametrize("text,expected", [
    ('[{"id": 1,', "cut short"), ('[{"id": 1}', "not closed"), ('[{"id": 1} {"id": 2}]', "expected ','"),
    ("[1,2,]", "trailing comma"), ("[1] x", "extra data"), ("", "empty file"), ('{"a": 1}', "a JSON object"),
    ('{"conversations": []}\nnot json', "line 2 is not JSON"),
])
def test_broken_files_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=expected):
        list(iter_records(path))


def test_only_regular_files(tmp_path):
    import os

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular"):
        list(iter_records(fifo))


def test_an_unpaired_surrogate_is_a_sample_problem():
    samples, problems = parse_records([{"id": "s", "conversations": [{"from": "human", "value": "a\ud800b"},
                                                                    {"from": "gpt", "value": "x"}]}])
    assert not samples and "surrogate" in problems[0].message
    assert OversizedRecord(5).size == 5


@pytest.mark.tokenizers
@pytest.mark.parametrize("name", ["vicuna-7b-v1.5", "vicuna-7b-v1.5-legacy", "Mistral-7B-Instruct-v0.3"])
def test_sentencepiece_twin_gives_the_slow_tokenizers_ids(tokenizers_dir, name):
    """Under transformers 4 the audit tokenizes like the slow SentencePiece class LLaVA loads, at batch speed."""
    import random

    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers 5 has no slow tokenizer classes")
    from transformers import AutoTokenizer

    from llava_doctor.templates.tokenize import Encoder, SentencePieceTwin

    slow = AutoTokenizer.from_pretrained(str(tokenizers_dir / name), use_fast=False)
    twin = SentencePieceTwin.of(slow)
    rng = random.Random(0)
    texts = ["".join(rng.choice(PIECES + list("ab c.")) for _ in range(rng.randint(0, 14))) for _ in range(600)]
    for special in (True, False):
        assert twin.encode_batch(texts, special) == [list(i) for i in slow(texts, add_special_tokens=special)["input_ids"]]
    encode = Encoder(slow)
    encode.prefetch([(t, True) for t in texts])
    assert encode._twin is not False and encode._twin_checked == len(set(texts))


@pytest.mark.tokenizers
@pytest.mark.parametrize("name", ["vicuna-7b-v1.5", "vicuna-7b-v1.5-legacy", "Mistral-7B-Instruct-v0.2", "Llama-2-7b-chat-hf"])
def test_slow_offsets_by_tiling_equal_the_piece_walk(tokenizers_dir, name):
    """Where the slow tokenizer's pieces spell the text, the list-wide offsets (`_tiled`) are the walk's, exactly."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers 5 has no slow tokenizer classes")
    if not (tokenizers_dir / name).is_dir():
        pytest.skip(f"no {name} tokenizer fixture")
    from transformers import AutoTokenizer

    from llava_doctor.templates.tokenize import SlowPieces

    slow = AutoTokenizer.from_pretrained(str(tokenizers_dir / name), use_fast=False)
    pieces = SlowPieces(slow)
    tiled = 0

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.sampled_from(PIECES + ["\u2581", "\u2581a", "ab c."]), max_size=14).map("".join), st.booleans())
    def same(text, special):
        nonlocal tiled
        ids = list(slow(text, add_special_tokens=special)["input_ids"])
        before, after = pieces.added_counts(special)
        fast = pieces._tiled(text, ids, before, after)
        if fast is not None:
            tiled += 1
            assert fast == pieces._walk(text, ids, before, after)

    same()
    assert tiled > 0  # the fast path was exercised, not only skipped


def test_a_finished_chunk_is_forgotten_through_the_view_that_shares_the_cache():
    """The audit tokenizes each chunk through a `with_tokenizer` view; forgetting there must empty the cache the
    views share, or every text of a 665k-sample dataset stays in memory."""
    from llava_doctor.core.tokenizer import load_tokenizer
    from llava_doctor.templates.tokenize import Encoder

    tokenizer = load_tokenizer()
    encoder = Encoder(tokenizer)
    view = encoder.with_tokenizer(tokenizer)
    long_text = "a red square at the top left " * 4
    view.length(long_text)
    view.length("a")
    view.forget()
    assert [text for text, _ in encoder._cache] == ["a"]  # the short probe stays, the sample's text is gone
