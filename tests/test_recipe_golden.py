"""The project's recipes against the REAL LLaVA / LLaVA-NeXT preprocessing code.

tests/data/recipe_golden.json holds what the real training code (run outside this project, see the
file's "about" and "sources") produced for each (recipe, tokenizer, template, pad token,
conversation, max_length): the `tokenization mismatch: X vs. Y` it printed, the input ids, the labels,
or the exception it raised. Every case must be reproduced exactly by
``setup_tokenizer`` + ``get_recipe(recipe).preprocess``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

GOLDEN_PATH = Path(__file__).resolve().parent / "data" / "recipe_golden.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
IGNORE_INDEX = -100


def flatten_cases(golden: dict) -> list[dict]:
    """{recipe: {template: {tokenizer: [row, ...]}}} -> one dict per case (row keys from case_columns)."""
    return [
        {"recipe": recipe, "template": template, "tokenizer": tokenizer, **dict(zip(golden["case_columns"], row))}
        for recipe, by_template in golden["cases"].items()
        for template, by_tokenizer in by_template.items()
        for tokenizer, rows in by_tokenizer.items()
        for row in rows
    ]


CASES = flatten_cases(GOLDEN)

# LLaVA-NeXT's preprocess_qwen / preprocess_llama3 call two tokenizer APIs that transformers 5 changed
# (apply_chat_template now returns a dict; additional_special_tokens_ids is gone), so here they crash
# before reading the sample. Their api_shim twins record what the same code does on the transformers
# it pins; a recipe may predict either.
SHIMMED = {
    (c["recipe"], c["tokenizer"], c["template"], c["pad_token"], c["conversation"], c["max_length"]): c
    for c in CASES if c["api_shim"]
}


def case_id(case: dict) -> str:
    pad = "pad=" + (case["pad_token"] if case["pad_token"] is not None else "setup")
    parts = [case["recipe"], case["template"], case["tokenizer"], pad, case["conversation"], f"L{case['max_length']}"]
    if case["api_shim"]:
        parts.append("api4")
    return ":".join(parts)


def expected_labels(case: dict) -> list[int]:
    ids = GOLDEN["token_ids"][case["input_ids"]]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in case["supervised"]:
        labels[start:end] = ids[start:end]
    for pos, label in (case["label_overrides"] or {}).items():
        labels[int(pos)] = label
    return labels


@functools.lru_cache(maxsize=None)
def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@functools.lru_cache(maxsize=None)
def configured_tokenizer(folder: str, codebase: str, v0: bool, pad_token: str | None):
    """setup_tokenizer deep-copies (about a second for big vocabularies). The real train() setup differs
    between LLaVA (both versions: the same block) and LLaVA-NeXT, and otherwise branches only on
    ``--version v0`` (v0.5 is not in the corpus), so one copy serves every other template."""
    from llava_doctor.templates.recipes import setup_tokenizer

    return setup_tokenizer(load_tokenizer(folder), codebase, "v0" if v0 else "v1", pad_token)


def run_project(case: dict, tokenizers_dir: Path):
    """(the project's RecipeResult, the pad token of the tokenizer the project set up)."""
    from llava_doctor.templates.recipes import get_recipe

    folder = str(tokenizers_dir / case["tokenizer"])
    codebase = "llava-next" if case["recipe"] == "llava-next" else "llava"
    tok = configured_tokenizer(folder, codebase, case["template"] == "v0", case["pad_token"])
    conversation = json.loads(json.dumps(GOLDEN["conversations"][case["conversation"]]))
    result = get_recipe(case["recipe"]).preprocess(
        conversation, tok, case["template"], has_image=case["has_image"], max_length=case["max_length"]
    )
    return result, tok.pad_token


def first_difference(expected: list[int], got: list[int]) -> str:
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return f"first difference at {i}: expected {expected[max(0, i - 3):i + 4]} got {got[max(0, i - 3):i + 4]}"
    return f"lengths differ: expected {len(expected)} got {len(got)}"


def disagreement(case: dict, result, pad_after_setup: str | None) -> str | None:
    """None when the project's result reproduces the real code's outcome, else one line saying how not."""
    if pad_after_setup != case["pad_after_setup"]:
        return f"tokenizer setup: real pad_token {case['pad_after_setup']!r} vs project {pad_after_setup!r}"
    if case["crash"] is not None:
        if result.crash:
            return None
        return f"real code raised {case['crash']!r}; project predicted no crash (mismatch={result.mismatch})"
    if result.crash:
        return f"project predicted a crash ({result.crash!r}); real code ran (mismatch={case['mismatch']})"
    want_mismatch = tuple(case["mismatch"]) if case["mismatch"] is not None else None
    got_mismatch = tuple(result.mismatch) if result.mismatch is not None else None
    if want_mismatch != got_mismatch:
        return f"mismatch: real {want_mismatch} vs project {got_mismatch}"
    ids = GOLDEN["token_ids"][case["input_ids"]]
    if list(result.input_ids) != ids:
        return "input_ids: " + first_difference(ids, list(result.input_ids))
    labels = expected_labels(case)
    if list(result.labels) != labels:
        return "labels: " + first_difference(labels, list(result.labels))
    return None


def verdict(case: dict, tokenizers_dir: Path) -> str | None:
    result, pad = run_project(case, tokenizers_dir)
    problem = disagreement(case, result, pad)
    twin = SHIMMED.get((case["recipe"], case["tokenizer"], case["template"], case["pad_token"],
                        case["conversation"], case["max_length"]))
    if problem is not None and not case["api_shim"] and twin is not None and case["crash"] is not None:
        # the native crash is transformers-5 API drift: the pinned-transformers outcome is as good an answer
        if disagreement(twin, result, pad) is None:
            return None
        problem += " (nor the pinned-transformers outcome)"
    return problem


def test_golden_file_is_consistent():
    assert len({case_id(c) for c in CASES}) == len(CASES)
    assert {c["recipe"] for c in CASES} == {"llava", "llava-1.5", "llava-next"}
    assert {c["template"] for c in CASES} == {
        "plain", "v0", "v1", "vicuna_v1", "llava_v1", "llava_llama_2", "mistral_instruct", "chatml_direct", "mpt",
        "qwen_1_5", "qwen_2", "llava_llama_3", "gemma_instruct",
    }
    for c in CASES:
        assert isinstance(c["has_image"], bool) and c["conversation"] in GOLDEN["conversations"]
        if c["crash"] is None:
            ids = GOLDEN["token_ids"][c["input_ids"]]
            assert all(0 <= start < end <= len(ids) for start, end in c["supervised"])
            if c["mismatch"] is not None:  # LLaVA masks the whole sample when it prints the warning
                assert c["supervised"] == []
        else:
            assert c["mismatch"] is None and c["input_ids"] is None


# The whole corpus costs one and a half to two minutes on one core (setup_tokenizer deep-copies each configured
# tokenizer), so it is marked slow. Every recipe x template on the Vicuna tokenizer with its set-up pad runs by
# default: about 10 s, nearly all of it importing transformers and loading the tokenizer.
def is_quick(case: dict) -> bool:
    return case["tokenizer"] == "vicuna-7b-v1.5" and case["pad_token"] is None


QUICK_CASES = [c for c in CASES if is_quick(c)]


@pytest.mark.tokenizers
@pytest.mark.parametrize("case", QUICK_CASES, ids=case_id)
def test_recipe_reproduces_real_training_code_vicuna(case, tokenizers_dir):
    problem = verdict(case, tokenizers_dir)
    assert problem is None, f"{case_id(case)}: {problem}"


@pytest.mark.slow
@pytest.mark.tokenizers
@pytest.mark.parametrize("case", [c for c in CASES if not is_quick(c)], ids=case_id)
def test_recipe_reproduces_real_training_code(case, tokenizers_dir):
    problem = verdict(case, tokenizers_dir)
    assert problem is None, f"{case_id(case)}: {problem}"
