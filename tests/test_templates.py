"""Conversation templates: rendering as LLaVA does, parsing back, and the oracle (no fixtures needed)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llava_doctor.templates.conversation import TEMPLATES, SepStyle, get_template, parse, render
from llava_doctor.templates.examples import tiny_tokenizer
from llava_doctor.templates.oracle import oracle_full_prompt
from llava_doctor.templates.tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX, Encoder, image_token_ids

REQUIRED = ("plain", "v0", "v1", "vicuna_v1", "llava_v1", "llava_llama_2", "mistral_instruct", "chatml_direct",
            "mpt", "qwen_1_5", "qwen_2", "llava_llama_3", "gemma_instruct")


def test_required_templates_exist():
    assert set(REQUIRED) <= set(TEMPLATES)


def test_v1_renders_like_llava():
    text = render("v1", ["<image>\nWhat is it?", "A cat.", "And?", "Black."]).text
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
        "USER: And? ASSISTANT: Black.</s>"
    )


def test_llama_2_wraps_system_and_inst():
    text = render("llava_llama_2", ["Hi", "Hello.", "Bye", "Ciao."]).text
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.")
    assert text.endswith("<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST] Ciao. </s>")
    assert render("mistral_instruct", ["Hi", "Yo."]).text == "[INST] Hi [/INST] Yo. </s>"


def test_mpt_and_chatml_and_gemma_and_llama3():
    assert render("chatml_direct", ["Q", "A"]).text == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>"
    )
    assert render("qwen_2", ["Q", "A"]).text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
    )
    assert render("gemma_instruct", ["Q", "A"]).text == "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
    assert render("llava_llama_3", ["Q", " A "]).text.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>")
    assert render("plain", ["<image>\nignored", "A cat."]).text == "<image>A cat.\n"


def test_empty_answer_renders_like_llava():
    # LLaVA's get_prompt: a falsy message renders "ROLE:" with no separator.
    assert render("v1", ["Q", ""]).text.endswith("USER: Q ASSISTANT:")


def test_spans_cover_answers_and_their_end_of_turn():
    rendered = render("v1", ["Q", "A cat.", "And?", "Black."])
    answers = rendered.answers()
    assert [rendered.text[s.start:s.end] for s in answers] == ["A cat.", "Black."]
    assert all(rendered.text[s.end:s.end_stop] == "</s>" for s in answers)
    chat = render("chatml_direct", ["Q", "A"])
    span = chat.answers()[0]
    assert chat.text[span.end:span.end_stop] == "<|im_end|>"


message = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>[]#\x00"),
                  min_size=1, max_size=30).filter(lambda m: m.strip() == m and m)


@pytest.mark.parametrize("name", sorted(n for n, t in TEMPLATES.items() if t.sep_style is not SepStyle.PLAIN))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(message, min_size=2, max_size=6).filter(lambda m: len(m) % 2 == 0))
def test_render_then_parse_round_trips(name, messages):
    template = get_template(name)
    blocked = [s for s in template.separators] + [r.strip() for r in template.roles if r.strip()] + ["USER", "ASSISTANT", "Human", "Assistant"]
    if any(b and b in m for b in blocked for m in messages):
        return  # a message holding the template's own markers is ambiguous by construction (see LD101)
    assert parse(template, render(template, messages).text) == messages


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer()


def test_image_token_ids_matches_llava_semantics(tiny):
    encode = Encoder(tiny)
    ids = image_token_ids(encode, "a <image> cat", tiny.bos_token_id)
    plain_a, plain_cat = encode("a "), encode(" cat")
    assert ids == [tiny.bos_token_id] + plain_a[1:] + [IMAGE_TOKEN_INDEX] + plain_cat[1:]


words = st.lists(st.sampled_from(["a", "cat", "dog", "black", "white", "yes", "no", "."]), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=st.lists(words, min_size=1, max_size=3), image=st.booleans())
def test_oracle_supervised_tokens_decode_to_the_answers(tiny, answers, image):
    texts = [" ".join(a) for a in answers]
    messages = []
    for k, answer in enumerate(texts):
        messages += [("<image>\n" if image and k == 0 else "") + "what is this ?", answer]
    rendered = render(get_template("v1"), messages)
    prompt = Encoder(tiny).prompt(rendered.text, image, tiny.bos_token_id)
    out = oracle_full_prompt(prompt, rendered)
    supervised = [t for t, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]
    assert tiny.decode(supervised).replace(" ", "") == "".join(t + "</s>" for t in texts).replace(" ", "")
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(out.input_ids, out.labels))


def test_tokenizer_loading_follows_each_train_py():
    from llava_doctor.templates.codebase import tokenizer_loading

    assert tokenizer_loading("llava", "/m/vicuna-7b-v1.5").use_fast is False
    assert tokenizer_loading("llava", "/m/mpt-7b-chat").use_fast is None
    assert tokenizer_loading("llava-next", "/m/Mistral-7B").padding_side == "left"
    assert tokenizer_loading("llava-next", "/m/Qwen2-7B").use_fast is None
    assert tokenizer_loading("llava-next", "/m/Llama-3-8B").use_fast is False
    unknown = tokenizer_loading("llava-next", "/m/gemma-2b")
    assert unknown.crash.startswith("UnboundLocalError") and "gemma-2b" in unknown.rule


def test_template_choice_per_codebase():
    from llava_doctor.templates.codebase import choose_template

    assert choose_template("llava", "v1").note is None
    fallback = choose_template("llava", "qwen_2")
    assert fallback.template.name == "vicuna_v1" and fallback.silent_fallback and "only llava-next" in fallback.note
    assert choose_template("llava-next", "qwen_2").note is None
    assert choose_template("llava-next", "v1_mmtag").silent_fallback  # LLaVA-NeXT calls it llava_v1_mmtag
    v0 = choose_template("llava", "v0")
    assert v0.template.name == "vicuna_v1" and not v0.silent_fallback
    assert choose_template("llava-next", "v0").template.name == "v0"


def test_preprocess_multimodal_per_codebase():
    from llava_doctor.templates.codebase import preprocess_multimodal

    turns = [{"from": "human", "value": "Compare <image> and <image>."}, {"from": "gpt", "value": "<image> fine"}]
    assert [v for _, v in preprocess_multimodal(turns, "llava", "v1")] == ["<image>\nCompare  and .", "<image>\nfine"]
    assert [v for _, v in preprocess_multimodal(turns, "llava-next", "v1")] == ["Compare <image> and <image>.",
                                                                                "<image> fine"]
    one = [{"from": "human", "value": "What is <image>?"}]
    assert preprocess_multimodal(one, "llava-next", "v1_mmtag")[0][1] == "<Image><image></Image>\nWhat is ?"
    assert preprocess_multimodal(one, "llava", "v1", mm_use_im_start_end=True)[0][1] == "<im_start><image><im_end>\nWhat is ?"
