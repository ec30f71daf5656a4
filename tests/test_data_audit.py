"""The tokenization audit (LD101-LD105) on the real tokenizers in ../shared/fixtures/tokenizers.

Tokenizers are loaded the way each recipe's train.py loads them (LLaVA: the slow SentencePiece class
where transformers 4 has one), so the same tests hold in LLaVA's pinned environment and in 5.x;
where the training code itself behaves differently per transformers version, the test says which.
"""
from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_doctor.templates.audit import audit_conversations
from llava_doctor.templates.recipes import get_recipe, setup_tokenizer, shared_setup
from llava_doctor.templates.tokenize import IGNORE_INDEX

pytestmark = pytest.mark.tokenizers
_LOADED: dict[tuple, object] = {}


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


@pytest.fixture(scope="module")
def load(tokenizers_dir):
    from llava_doctor.artifacts.dataset import load_tokenizer

    def get(name, recipe="llava"):
        key = (name, recipe)
        if key not in _LOADED:
            _LOADED[key] = load_tokenizer(tokenizers_dir / name, recipe, model_path=name)
        return _LOADED[key]

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


def flagged(report) -> set[tuple[str, str]]:
    """(code, sample id) for every sample a finding names, grouped or not."""
    out = set()
    for f in report.findings:
        rows = (f.extra.get("records") or {}).get("rows") or []
        out |= {(f.code, str(row[0])) for row in rows}
        if f.extra.get("sample") is not None:
            out.add((f.code, str(f.extra["sample"])))
    return out


def _messages(report, code):
    return [f.message for f in report.by_code(code)]


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
]
# LLaVA-NeXT's per-turn recipes run on transformers 4; under 5 they raise (see the version test below)
NEXT_PER_TURN = [
    ("Qwen2-7B-Instruct", "qwen_1_5", "llava-next"),
    ("Qwen2-7B-Instruct", "qwen_2", "llava-next"),
    ("Llama-3.1-8B-Instruct", "llava_llama_3", "llava-next"),
]


@pytest.mark.parametrize("tokenizer,template,recipe", MATCHING, ids=[f"{t}-{m}-{r}" for t, m, r in MATCHING])
def test_matching_template_is_clean_on_ordinary_data(load, tokenizer, template, recipe):
    report = audit_conversations(ORDINARY, load(tokenizer, recipe), template, recipe=recipe)
    assert not report.findings, [f.message for f in report.findings]
    data = report.stats["data"]
    assert data["dropped"] == data["crashed"] == data["drifted"] == data["unverified"] == 0
    assert data["supervised_tokens"] > 0 and data["supervised_tokens"] == data["answer_tokens"]


@pytest.mark.parametrize("tokenizer,template,recipe", NEXT_PER_TURN, ids=[f"{t}-{m}" for t, m, _ in NEXT_PER_TURN])
def test_next_per_turn_recipes_follow_the_transformers_version(load, tokenizer, template, recipe):
    report = audit_conversations(ORDINARY, load(tokenizer, recipe), template, recipe=recipe)
    if transformers_major() < 5:
        assert not report.findings, [f.message for f in report.findings]
        return
    # transformers 5: apply_chat_template returns a BatchEncoding (llama3) and additional_special_tokens_ids
    # is gone (qwen): LLaVA-NeXT's own code raises on every sample, and the audit says so.
    crash = report.by_code("LD101")
    assert len(crash) == 1 and crash[0].extra["count"] == 4
    expected = "additional_special_tokens_ids" if "qwen" in template else "too many dimensions 'str'"
    assert expected in crash[0].message


def test_plain_pretraining_pairs_are_clean(load):
    pairs = [{"id": "p", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                              {"from": "gpt", "value": "A cat on a mat."}]}]
    report = audit_conversations(pairs, load("vicuna-7b-v1.5"), "plain")
    assert not report.findings, [f.message for f in report.findings]


def test_v15_code_with_new_tokenizers_drops_multi_round_samples_in_one_finding(load):
    # haotian-liu/LLaVA#661: v1.5 code, tokenizers >= 0.14, legacy=False: round 2 counts one token too many.
    report = audit_conversations(ORDINARY, load("vicuna-7b-v1.5", "llava-1.5"), "v1", recipe="llava-1.5")
    (group,) = report.by_code("LD101")
    assert group.extra["count"] == 2 and group.extra["samples"] == ["two", "three"]
    assert "2 samples: dropped" in group.message and "drift starts at round 2 (2 samples)" in group.message
    assert "legacy=False" in group.message
    assert group.extra["signatures"] == {"+1 per round from round 2": 1, "constant +1 from round 2": 1}
    rows = {row[0]: row for row in group.extra["records"]["rows"]}
    assert (rows["two"][2], rows["two"][3], rows["two"][4]) == (74, 73, 2)
    assert (rows["three"][2], rows["three"][3]) == (89, 87)
    assert "`WARNING: tokenization mismatch: 74 vs. 73. (ignored)`" in group.message


def test_thousands_of_samples_give_one_finding_per_cause(load):
    data = [record(f"s{k}", ["A cat.", "Black."] if k % 2 else ["Yes."]) for k in range(600)]
    data += [{**record(f"t{k}", ["Hi."], image=False), "conversations": [
        {"from": "human", "value": "<image>\nHello?"}, {"from": "gpt", "value": "Hi."}]} for k in range(30)]
    report = audit_conversations(data, load("vicuna-7b-v1.5", "llava-1.5"), "v1", recipe="llava-1.5")
    by_code = {f.code: f for f in report.findings}
    assert sorted(by_code) == ["LD101", "LD105"] and len(report.findings) == 2
    assert by_code["LD101"].extra["count"] == 300 and len(by_code["LD101"].extra["records"]["rows"]) == 300
    assert by_code["LD101"].extra["samples"] == ["s1", "s3", "s5", "s7", "s9"]
    assert "and 295 more" in by_code["LD101"].message
    assert by_code["LD105"].extra["count"] == 30 and "tokenizes it as text" in by_code["LD105"].message


def test_v1_on_llama3_and_qwen_is_a_wrong_template(load):
    for name, pad in (("Meta-Llama-3-8B-Instruct", "<|end_of_text|>"), ("Qwen2-7B-Instruct", "<|endoftext|>")):
        report = audit_conversations(ORDINARY, load(name, "llava-1.5"), "v1", recipe="llava-1.5", pad_token=pad)
        (group,) = report.by_code("LD101")
        assert group.extra["count"] == 4
        assert "wrong template: its separator '</s>' is 3 tokens" in group.message
        assert report.by_code("LD103")
    qwen = audit_conversations([record("a", ["A cat."])], load("Qwen2-7B-Instruct", "llava-1.5"), "v1",
                               recipe="llava-1.5", pad_token="<|endoftext|>")
    assert "mismatch: 45 vs. 46." in qwen.by_code("LD101")[0].message


def test_qwen_under_llava_suggests_set_ups_that_work(load):
    qwen = load("Qwen2-7B-Instruct")
    report = audit_conversations(ORDINARY[:2], qwen, "v1", recipe="llava", suggest=True,
                                 tokenizer_for=lambda recipe: load("Qwen2-7B-Instruct", recipe))
    (crash,) = report.by_code("LD101")
    assert "pad_token is None" in crash.message and crash.extra["count"] == 2
    (fit,) = report.by_code("LD103")
    options = fit.extra["suggestions"]
    assert options and all(o.startswith("--template ") for o in options)
    assert "--pad-token '<|endoftext|>'" in " ".join(options)
    if transformers_major() < 5:
        assert any("--recipe llava-next" in o for o in options), options
    # every suggested set-up really is clean
    for option in options:
        parts = option.split()
        args = dict(zip(parts[::2], parts[1::2]))
        recipe = args.get("--recipe", "llava")
        rerun = audit_conversations(ORDINARY[:2], load("Qwen2-7B-Instruct", recipe), args["--template"], recipe=recipe,
                                    pad_token=args.get("--pad-token", "").strip("'") or None, select=["LD101", "LD102"])
        assert not rerun.findings, (option, [f.message for f in rerun.findings])


def test_v1_with_llava_next_and_qwen_crashes_on_legacy(load):
    nxt = audit_conversations(ORDINARY[1:2], load("Qwen2-7B-Instruct", "llava-next"), "v1", recipe="llava-next")
    assert "has no attribute 'legacy'" in _messages(nxt, "LD101")[0]
    fit = nxt.by_code("LD103")[0]
    if transformers_major() < 5:
        assert {"--template qwen_1_5", "--template qwen_2"} <= set(fit.extra["suggestions"])


def test_tinyllama_with_an_im_end_separator(load):
    report = audit_conversations(ORDINARY[:2], load("TinyLlama-1.1B-Chat-v1.0"), "mpt", recipe="llava")
    (group,) = report.by_code("LD101")
    assert group.extra["count"] == 2 and "'<|im_end|>' is 7 tokens" in group.message
    assert "--template v1" in report.by_code("LD103")[0].extra["suggestions"]


def test_pad_equal_to_eos_changes_every_count(load):
    report = audit_conversations(ORDINARY, load("TinyLlama-1.1B-Chat-v1.0"), "v1", pad_token="</s>")
    rows = {row[0]: row for f in report.by_code("LD101") for row in f.extra["records"]["rows"]}
    assert rows["one"][2] - rows["one"][3] == 1 and rows["three"][2] - rows["three"][3] == 3
    assert all("pad equal to eos" in m for m in _messages(report, "LD101"))


def test_mpt_arithmetic_of_llava_main_relies_on_a_bos(load):
    report = audit_conversations(ORDINARY[:2], load("mpt-7b-chat"), "mpt", recipe="llava")
    (group,) = report.by_code("LD101")
    assert group.extra["count"] == 2 and "BOS assumption" in group.message


def test_qwen3_breaks_llava_next_preprocess_qwen(load):
    report = audit_conversations(ORDINARY[:1], load("Qwen3-8B", "llava-next"), "qwen_2", recipe="llava-next")
    expected = "unpacks 13 ids, not 2" if transformers_major() < 5 else "additional_special_tokens_ids"
    assert expected in _messages(report, "LD101")[0]


@pytest.mark.skipif("transformers_major() >= 5", reason="LLaVA-NeXT's preprocess_llama3 raises under transformers 5")
def test_llama3_chat_template_appends_a_header_that_gets_trained(load):
    # This Meta-Llama-3 template ends every per-turn call with an assistant header: LLaVA-NeXT trains on it.
    report = audit_conversations(ORDINARY[:1], load("Meta-Llama-3-8B-Instruct", "llava-next"), "llava_llama_3",
                                 recipe="llava-next")
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
EDGES[7]["conversations"][0]["value"] = "<image>\nCompare."
EDGES[7]["conversations"] += [{"from": "human", "value": "<image>\nAnd this one?"}, {"from": "gpt", "value": "A dog."}]


def test_edge_cases_on_vicuna(load):
    report = audit_conversations(EDGES, load("vicuna-7b-v1.5"), "v1")
    found = flagged(report)
    assert ("LD101", "empty") in found and ("LD104", "empty") in found
    assert ("LD101", "eos_inside") in found and ("LD101", "role_inside") in found
    for name in ("trailing", "double_newline", "unicode", "no_image", "two_images"):
        assert ("LD101", name) not in found and ("LD102", name) not in found, name
    assert ("LD105", "missing_placeholder") in found
    assert ("LD105", "two_images") not in found
    messages = " ".join(_messages(report, "LD101"))
    assert "empty answer" in messages
    assert "separator text '</s>' inside a message" in messages and "'ASSISTANT: ' inside a message" in messages


@pytest.mark.skipif("transformers_major() >= 5", reason="LLaVA-NeXT's preprocess_qwen raises under transformers 5")
def test_edge_cases_on_qwen_next(load):
    report = audit_conversations(EDGES, load("Qwen2-7B-Instruct", "llava-next"), "qwen_2", recipe="llava-next")
    assert flagged(report) == {("LD104", "empty"), ("LD105", "missing_placeholder")}, flagged(report)


def test_malformed_conversations_are_a_data_problem_not_the_template(load):
    """One-sided and out-of-order conversations fail under every template: LD103 must not blame the
    template for them; LD101/LD104 name the data problem."""
    def turns(*roles):
        return [{"from": r, "value": ("<image>\nQ?" if k == 0 else "Q?") if r == "human" else "A."}
                for k, r in enumerate(roles)]

    bad = [{"id": f"b{k}", "image": "x.jpg", "conversations": t} for k, t in enumerate(
        [turns("human"), turns("human", "human", "gpt"), turns("human", "gpt", "gpt"), turns("human", "gpt", "human")]
        * 3)]
    report = audit_conversations(bad + ORDINARY[:2], load("vicuna-7b-v1.5"), "v1")
    assert not report.by_code("LD103"), _messages(report, "LD103")
    text = " ".join(_messages(report, "LD101") + _messages(report, "LD104"))
    for problem in ("one-sided: no gpt turn", "out of order: two human turns in a row",
                    "out of order: two gpt turns in a row", "ends with an unanswered human turn"):
        assert f"data problem: {problem}" in text, problem
    assert report.stats["data"]["malformed"] == 12


def test_template_the_codebase_lacks_is_named_once(load):
    report = audit_conversations(ORDINARY, load("vicuna-7b-v1.5"), "qwen_2", recipe="llava")
    notes = [f for f in report.by_code("LD103") if f.extra.get("used")]
    assert len(notes) == 1 and notes[0].extra["used"] == "vicuna_v1"
    assert "silently trains with vicuna_v1" in notes[0].message and "raise KeyError" in notes[0].message
    assert report.stats["data"]["template_used"] == "vicuna_v1"
    own = audit_conversations(ORDINARY, load("vicuna-7b-v1.5", "llava-next"), "qwen_2", recipe="llava-next",
                              select=["LD103"])
    assert not [f for f in own.by_code("LD103") if f.extra.get("used")]  # LLaVA-NeXT defines qwen_2


def test_image_token_lookalikes(load):
    """Text that looks like a placeholder: what each codebase does with it."""
    def rec(sid, value, answer="A kite.", **keys):
        return {"id": sid, **keys, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]}

    data = [rec("text_only", "<image>\nWhat is this?"), rec("video_text", "<video>\nWhat happens?", video="v.mp4"),
            rec("in_answer", "<image>\nWhat is this?", "It is <image> a kite.", image="a.jpg"),
            rec("typed_start", "<im_start><image><im_end>\nWhat?", image="a.jpg"),
            rec("fine", "<image>\nWhat is this?", image="a.jpg")]
    main = audit_conversations(data, load("vicuna-7b-v1.5"), "v1", select=["LD105"])
    found = {(row[0], f.message.split("; e.g.")[0]) for f in main.findings for row in f.extra["records"]["rows"]}
    names = {sid for sid, _ in found}
    assert "fine" not in names and {"text_only", "video_text", "in_answer", "typed_start"} <= names
    text = " ".join(m for _, m in found)
    assert "tokenizes it as text" in text and "`<video>` is not a placeholder in llava" in text
    assert "2 <image> placeholder(s) reach the model" in text  # the answer's <image> is an image position too
    assert "plain text without mm_use_im_start_end" in text
    flag = audit_conversations(data[3:], load("vicuna-7b-v1.5"), "v1", select=["LD105"], mm_use_im_start_end=True)
    assert any("doubled" in f.message for f in flag.findings)
    nxt = audit_conversations(data[1:2], load("vicuna-7b-v1.5", "llava-next"), "v1", recipe="llava-next",
                              select=["LD105"])
    assert any("frames are never used" in f.message for f in nxt.findings)
    assert any("0 <image> placeholder(s) reach the model" in f.message for f in nxt.findings)


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
    assert shared_setup(qwen, "llava", "v1").pad_token is None and qwen.pad_token == "<|endoftext|>"
    vicuna = load("vicuna-7b-v1.5")
    assert setup_tokenizer(vicuna, "llava", "v1").pad_token == "<unk>"
    assert setup_tokenizer(vicuna, "llava", "v0").pad_token == "[PAD]" and vicuna.pad_token is None


def test_unknown_pad_token_is_a_usage_error(load):
    from llava_doctor.findings import InputError

    with pytest.raises(InputError, match="--pad-token '<nope>' is not a token of this tokenizer"):
        audit_conversations(ORDINARY, load("vicuna-7b-v1.5"), "v1", pad_token="<nope>")


words = st.lists(st.sampled_from(["A", "cat", "dog", "black", "and", "white", "yes", ".", ",", "ü", "\n"]),
                 min_size=1, max_size=6).map(" ".join)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=st.lists(words, min_size=1, max_size=3), image=st.booleans(),
       name=st.sampled_from(["vicuna-7b-v1.5", "vicuna-7b-v1.5-legacy", "mpt-7b-chat", "Llama-2-7b-chat-hf"]),
       codebase=st.sampled_from(["llava-1.5", "llava", "llava-next"]))
def test_labels_agree_with_the_recipes_own_verdict(load, answers, image, name, codebase):
    template = {"mpt-7b-chat": "mpt", "Llama-2-7b-chat-hf": "llava_llama_2"}.get(name, "v1")
    tokenizer = shared_setup(load(name, codebase), codebase, template)
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
    one = audit_conversations(data, load("vicuna-7b-v1.5", "llava-1.5"), "v1", recipe="llava-1.5")
    two = audit_conversations(data, load("vicuna-7b-v1.5", "llava-1.5"), "v1", recipe="llava-1.5", workers=2)
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
    assert one.stats["data"]["dropped"] == 800


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_shards_and_rank0_writes(tmp_path, tokenizers_dir):
    import json

    from _torchrun import run_torchrun

    data = [record(f"s{k}", ["A cat.", "Black."] if k % 2 else ["Yes."]) for k in range(40)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "report.json"
    returncode, _, stderr = run_torchrun(  # --standalone: a free port, no fixed one to collide on
        ["-m", "llava_doctor", "data", str(path), "--tokenizer", str(tokenizers_dir / "vicuna-7b-v1.5"),
         "--template", "v1", "--recipe", "llava-1.5", "--format", "json", "--output", str(out), "--exit-zero"])
    assert returncode == 0, stderr[-2000:]
    report = json.loads(out.read_text())
    (group,) = [f for f in report["findings"] if f["code"] == "LD101"]
    assert sorted(row[0] for row in group["records"]["rows"]) == sorted(f"s{k}" for k in range(40) if k % 2)
    assert group["count"] == 20 and group["samples"] == ["s1", "s3", "s5", "s7", "s9"]
