"""The project's recipes against the REAL LLaVA / LLaVA-NeXT preprocessing code, per environment.

tests/data/recipe_golden/ holds what the real training code (run outside this project in several
transformers/tokenizers environments; see common.json's "about") produced for each case - a
(recipe, tokenizer folder, template, pad override, flags, model_max_length) group and a sample:
the `tokenization mismatch: X vs. Y` it printed, the input ids, the labels, or the exception it
raised. The running environment is tested against the golden file of its own behaviour class
(`golden_file_for`), and every case must be reproduced exactly: by the audit's default path
(round lengths derived from the prompt's tokenization) and by the exact path (every round
tokenized on its own, as the training code does).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "recipe_golden"
IGNORE_INDEX = -100
_VERSION = re.compile(r"^transformers-(\d+)\.(\d+)\.(\d+)\.json$")


def _version(text: str) -> tuple[int, int, int]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])  # type: ignore[return-value]


def golden_files() -> dict[tuple[int, int, int], Path]:
    found = {}
    for path in GOLDEN_DIR.glob("transformers-*.json"):
        match = _VERSION.match(path.name)
        if match:
            found[tuple(int(g) for g in match.groups())] = path
    return dict(sorted(found.items()))


def golden_file_for(transformers_version: str) -> Path:
    """The golden file whose behaviour the running transformers shares: within its major version, the
    newest golden environment not newer than the running one (the oldest when all are newer).

    Each file starts a behaviour class that lasts until the next one. What changes between them
    (measured by the generator on the real code): 4.37 -> 4.45: LlamaTokenizerFast gains `legacy`
    (LLaVA-NeXT's fast Mistral no longer crashes in preprocess_v1) and the fast Mistral tokenizers
    follow it; class-level default chat templates are gone (llava_llama_3 on a tokenizer without a
    chat template now raises); the slow Qwen2 tokenizer splits typed role markers differently.
    4.x -> 5.x: one tokenizer class per model (use_fast is ignored), `apply_chat_template` returns a
    BatchEncoding (preprocess_llama3 raises `too many dimensions 'str'`), and
    `additional_special_tokens_ids` is gone (preprocess_qwen raises AttributeError).
    """
    running = _version(transformers_version)
    same_major = [v for v in golden_files() if v[0] == running[0]] or list(golden_files())
    older = [v for v in same_major if v <= running]
    return golden_files()[max(older) if older else min(same_major)]


COMMON = json.loads((GOLDEN_DIR / "common.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def load_golden(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _environment_golden() -> dict:
    import transformers

    return load_golden(golden_file_for(transformers.__version__))


def cases_of(golden: dict) -> list[dict]:
    """One dict per plan row: its set-up and the outcome of each sample."""
    out = []
    for row, outcomes in zip(COMMON["plan"], golden["outcomes"]):
        recipe, tokenizer, template, pad, flags, max_length, samples = row
        out.append({"recipe": recipe, "tokenizer": tokenizer, "template": template, "pad_token": pad, "flags": flags,
                    "max_length": max_length, "samples": samples, "pad_after_setup": outcomes[0],
                    "outcomes": outcomes[1:]})
    return out


def group_id(case: dict) -> str:
    pad = "pad=" + (case["pad_token"] if case["pad_token"] is not None else "setup")
    parts = [case["recipe"], case["template"], case["tokenizer"], pad, f"L{case['max_length']}"]
    if case["flags"]:
        parts.append(case["flags"])
    return ":".join(parts)


def expected(golden: dict, outcome) -> dict:
    if isinstance(outcome, int):
        return {"crash": golden["crashes"][outcome]}
    mismatch, ids_key, supervised, *rest = outcome
    ids = COMMON["tokens"][ids_key]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in supervised:
        labels[start:end] = ids[start:end]
    for pos, label in (rest[0] if rest else {}).items():
        labels[int(pos)] = label
    return {"crash": None, "mismatch": tuple(mismatch) if mismatch else None, "input_ids": ids, "labels": labels}


def load_tokenizer(folder: str, recipe: str):
    """As the recipe's train.py loads it (by the model name), falling back as the harness did."""
    from llava_doctor.templates.codebase import tokenizer_loading

    loading = tokenizer_loading(recipe, Path(folder).name)
    kwargs = {} if loading.crash else loading.kwargs
    return _load(folder, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _load(folder: str, kwargs: tuple):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **dict(kwargs))


def samples_of(case: dict):
    from llava_doctor.artifacts.dataset import parse_records

    records = [(k, {"id": name, **COMMON["samples"][name]["keys"], "conversations": COMMON["samples"][name]["conversations"]})
               for k, name in enumerate(case["samples"])]  # the audit never modifies a record
    samples, problems = parse_records(records)
    assert not problems, problems
    return samples


def run_project(case: dict, tokenizers_dir: Path, *, exact: bool):
    """(the project's RecipeResults for the case's samples, the pad token of the tokenizer it set up)."""
    from llava_doctor.templates.analysis import recipe_results
    from llava_doctor.templates.recipes import shared_setup, vision_for
    from llava_doctor.templates.tokenize import Encoder

    base = load_tokenizer(str(tokenizers_dir / case["tokenizer"]), case["recipe"])
    tok = shared_setup(base, case["recipe"], case["template"], case["pad_token"], max_length=case["max_length"],
                       vision=vision_for(case["flags"] == "im_start_end", case["flags"] == "im_patch"))
    results = recipe_results(samples_of(case), tok, case["template"], case["recipe"], max_length=case["max_length"],
                             encoder=Encoder(tok, derive=not exact), mm_use_im_start_end=case["flags"] == "im_start_end")
    return results, tok.pad_token


def first_difference(want: list[int], got: list[int]) -> str:
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            return f"first difference at {i}: expected {want[max(0, i - 3):i + 4]} got {got[max(0, i - 3):i + 4]}"
    return f"lengths differ: expected {len(want)} got {len(got)}"


def disagreement(want: dict, result) -> str | None:
    """None when the project's result reproduces the real code's outcome, else one line saying how not."""
    if want["crash"] is not None:
        return None if result.crash else f"real code raised {want['crash']!r}; project predicted no crash"
    if result.crash:
        return f"project predicted a crash ({result.crash!r}); real code ran (mismatch={want['mismatch']})"
    got_mismatch = tuple(result.mismatch) if result.mismatch is not None else None
    if want["mismatch"] != got_mismatch:
        return f"mismatch: real {want['mismatch']} vs project {got_mismatch}"
    if list(result.input_ids) != want["input_ids"]:
        return "input_ids: " + first_difference(want["input_ids"], list(result.input_ids))
    if list(result.labels) != want["labels"]:
        return "labels: " + first_difference(want["labels"], list(result.labels))
    return None


def verdicts(case: dict, golden: dict, tokenizers_dir: Path, *, exact: bool) -> list[str]:
    results, pad = run_project(case, tokenizers_dir, exact=exact)
    if pad != case["pad_after_setup"]:
        return [f"tokenizer set-up: real pad_token {case['pad_after_setup']!r} vs project {pad!r}"]
    problems = []
    for name, outcome, result in zip(case["samples"], case["outcomes"], results):
        problem = disagreement(expected(golden, outcome), result)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def test_golden_files_are_consistent():
    plan = COMMON["plan"]
    assert len({tuple(map(str, row[:6])) for row in plan}) == len(plan)
    assert {row[0] for row in plan} == {"llava", "llava-1.5", "llava-next"}
    for path in golden_files().values():
        golden = load_golden(path)
        assert len(golden["outcomes"]) == len(plan), path.name
        for row, outcomes in zip(plan, golden["outcomes"]):
            assert len(outcomes) == len(row[6]) + 1, (path.name, row[:6])
            for outcome in outcomes[1:]:
                if isinstance(outcome, list):
                    mismatch, key, supervised, *_ = outcome
                    ids = COMMON["tokens"][key]
                    assert all(0 <= a < b <= len(ids) for a, b in supervised)
                    if mismatch:  # LLaVA masks the whole sample when it prints the warning
                        assert supervised == []


def test_golden_file_choice():
    files = golden_files()
    assert files, "no golden file"
    for version, path in files.items():
        assert golden_file_for(".".join(map(str, version))) == path
    assert golden_file_for("5.99.0").name.startswith("transformers-5.")
    assert golden_file_for("4.36.0").name.startswith("transformers-4.")


# The vicuna / Qwen2 groups run by default (they hold every recipe x template, the image-token class
# and the flags); the rest of the corpus is marked slow. Each group is one test: its samples run as
# one batch, the way the audit runs them.
def is_quick(case: dict) -> bool:
    return case["tokenizer"] in ("vicuna-7b-v1.5", "Qwen2-7B-Instruct") and case["pad_token"] is None


def _cases() -> list[dict]:
    try:
        return cases_of(_environment_golden())
    except Exception:  # no transformers: the tests below skip through the fixture
        return []


CASES = _cases()


@pytest.mark.tokenizers
@pytest.mark.parametrize("case", [c for c in CASES if is_quick(c)], ids=group_id)
def test_recipe_reproduces_real_training_code_quick(case, tokenizers_dir):
    golden = _environment_golden()
    problems = verdicts(case, golden, tokenizers_dir, exact=False)
    assert not problems, f"{group_id(case)}: " + "; ".join(problems[:5])


@pytest.mark.slow
@pytest.mark.tokenizers
@pytest.mark.parametrize("case", [c for c in CASES if not is_quick(c)], ids=group_id)
def test_recipe_reproduces_real_training_code(case, tokenizers_dir):
    golden = _environment_golden()
    problems = verdicts(case, golden, tokenizers_dir, exact=False)
    assert not problems, f"{group_id(case)}: " + "; ".join(problems[:5])


@pytest.mark.slow
@pytest.mark.tokenizers
@pytest.mark.parametrize("tokenizer", sorted({c["tokenizer"] for c in CASES}))
def test_exact_path_reproduces_real_training_code(tokenizer, tokenizers_dir):
    """The exact path (every round tokenized on its own) agrees with the real code too: the derived
    lengths of the default path are proven equal to it on every golden case."""
    golden = _environment_golden()
    problems = []
    for case in CASES:
        if case["tokenizer"] == tokenizer:
            problems += [f"{group_id(case)}: {p}" for p in verdicts(case, golden, tokenizers_dir, exact=True)]
    assert not problems, "; ".join(problems[:5])
