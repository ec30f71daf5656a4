"""Tokenization audit against the floor and against LLaVA's own per-sample loop, same data, one run.

    python benchmarks/bench_data.py [--n 20000] [--tokenizer DIR] [--template v1] [--jobs 2]
                                    [--pinned-python /path/to/venv-with-transformers-4.37/bin/python]

Three ratios, all on one core (RAYON_NUM_THREADS=1) and in CPU seconds of the process (a busy machine
slows everything alike; the worker scaling is wall-clock):
- floor: one batch encode of the rendered prompts with the Rust tokenizer (every token once, nothing
  else). The audit is at most as fast; the target is at least 50 % of it.
- LLaVA's loop, this environment: a re-implementation of the *shape* of LLaVA's preprocess_v1 (per
  sample: render, tokenize the prompt - tokenizer_image_token for images -, a torch tensor, one
  tokenizer call per round and per instruction, tensor masking) with the tokenizer class this
  environment's transformers gives (5.x: one class; 4.x: the fast class).
- LLaVA's loop, slow tokenizer: the same loop with ``use_fast=False`` - what LLaVA's train.py loads -,
  run here when this transformers has slow classes (4.x), else with `--pinned-python` (an
  interpreter of LLaVA's pinned environment, e.g. transformers 4.37.2 / tokenizers 0.15.1).
The audit (LD101/102/104/105: the recipe's arithmetic AND the oracle AND the checks) runs with one
process and with --jobs worker processes. Never run by pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = ("the a cat dog sits on mat red blue green picture shows two people walking street near "
         "building tall tree sky cloudy sunny what is this where are they how many colour of car").split()


def generate(n: int, seed: int = 0) -> list[dict]:
    """LLaVA-665k-like data: instructions drawn from a pool of 300 (they repeat a lot in real
    instruction data), free-text answers, 1-4 rounds, 70 % with an image."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))).capitalize() + "?" for _ in range(300)]
    out = []
    for i in range(n):
        rounds = rng.randint(1, 4)
        image = rng.random() < 0.7
        turns = []
        for k in range(rounds):
            q = rng.choice(pool)
            a = " ".join(rng.choices(WORDS, k=rng.randint(3, 40))).capitalize() + "."
            turns += [{"from": "human", "value": ("<image>\n" if image and k == 0 else "") + q},
                      {"from": "gpt", "value": a}]
        record = {"id": str(i), "conversations": turns}
        if image:
            record["image"] = f"{i}.jpg"
        out.append(record)
    return out


def rendered_prompts(records: list[dict], template_name: str) -> list[str]:
    from llava_doctor.templates.conversation import get_template, render

    t = get_template(template_name)
    out = []
    for record in records:
        messages = []
        for turn in record["conversations"]:
            value = turn["value"]
            if "image" in record and "<image>" in value:
                value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
            messages.append(value)
        out.append(render(t, messages).text)
    return out


def naive_loop(records: list[dict], tokenizer, template_name: str) -> int:
    """Per-sample preprocessing the way LLaVA's training code is shaped (re-implemented, not copied)."""
    import torch

    from llava_doctor.templates.conversation import get_template

    t = get_template(template_name)
    sep = t.sep + t.roles[1] + ": "
    bos = tokenizer.bos_token_id
    legacy = getattr(tokenizer, "legacy", True)

    def image_ids(text: str) -> list[int]:
        chunks = [tokenizer(c).input_ids for c in text.split("<image>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == bos:
            offset = 1
            ids.append(chunks[0][0])
        for k, chunk in enumerate(chunks):
            if k:
                ids.append(-200)
            ids.extend(chunk[offset:])
        return ids

    dropped = 0
    for record, prompt in zip(records, rendered_prompts(records, template_name)):
        has_image = "image" in record
        if has_image:
            input_ids = torch.tensor([image_ids(prompt)], dtype=torch.long)
        else:
            input_ids = tokenizer([prompt], return_tensors="pt", padding="longest",
                                  max_length=tokenizer.model_max_length, truncation=True).input_ids
        target = input_ids[0].clone()
        total = int(target.ne(tokenizer.pad_token_id).sum())
        cur = 1
        target[:cur] = -100
        for i, rou in enumerate(prompt.split(t.sep2)):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            length = (lambda s: len(image_ids(s))) if has_image else (lambda s: len(tokenizer(s).input_ids))
            round_len, instruction_len = length(rou), length(parts[0]) - 2
            if i != 0 and not legacy:
                round_len -= 1
                instruction_len -= 1
            target[cur:cur + instruction_len] = -100
            cur += round_len
        target[cur:] = -100
        if cur < tokenizer.model_max_length and cur != total:
            target[:] = -100
            dropped += 1
    return dropped


def cpu() -> float:
    """CPU seconds of this process: one-core rates stay comparable on a machine others use too."""
    return time.process_time()


def floor(records: list[dict], tokenizer, template_name: str) -> float:
    """CPU seconds for one batch encode of every rendered prompt (Rust, one thread)."""
    prompts = rendered_prompts(records, template_name)
    rust = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer")
    start = cpu()
    rust.encode_batch(prompts, add_special_tokens=True)
    return cpu() - start


def time_naive(records, tokenizer_dir: str, template: str, use_fast: bool | None) -> tuple[float, str, int]:
    from transformers import AutoTokenizer

    from llava_doctor.templates.recipes import setup_tokenizer

    kwargs = {} if use_fast is None else {"use_fast": use_fast}
    tokenizer = setup_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, **kwargs),
                                "llava", template)
    start = cpu()
    dropped = naive_loop(records, tokenizer, template)
    return cpu() - start, type(tokenizer).__name__, dropped


def has_slow_classes() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_tok = os.path.join(here, "..", "..", "shared", "fixtures", "tokenizers", "vicuna-7b-v1.5")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--tokenizer", default=os.environ.get("LLAVA_DOCTOR_BENCH_TOKENIZER", default_tok))
    parser.add_argument("--template", default="v1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--naive-n", type=int, default=5_000, help="Time LLaVA's loop on this many samples and scale.")
    parser.add_argument("--pinned-python", default=os.environ.get("LLAVA_DOCTOR_PINNED_PYTHON"),
                        help="Interpreter of LLaVA's pinned environment, for the slow-tokenizer loop under transformers 5.")
    parser.add_argument("--naive-only", choices=("fast", "slow"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import transformers

    records = generate(args.n)
    naive_n = min(args.naive_n, args.n)
    if args.naive_only:  # the child run of --pinned-python
        seconds, cls, dropped = time_naive(records[:naive_n], args.tokenizer, args.template,
                                           False if args.naive_only == "slow" else None)
        print(json.dumps({"rate": naive_n / seconds, "class": cls, "transformers": transformers.__version__}))
        return

    import tokenizers
    from transformers import AutoTokenizer

    from llava_doctor.templates.audit import audit_conversations
    from llava_doctor.templates.recipes import setup_tokenizer

    print(f"{args.n:,} conversations, tokenizer {os.path.basename(os.path.normpath(args.tokenizer))}, template "
          f"{args.template}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
          f"{os.cpu_count()} cpu(s) visible")
    fast = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    tokens = sum(len(e) for e in fast._tokenizer.encode_batch(rendered_prompts(records[:2000], args.template)))
    floor_s = floor(records, setup_tokenizer(fast, "llava", args.template), args.template)
    rates = {"floor": args.n / floor_s}
    print(f"floor (batch encode, 1 core):       {rates['floor']:9,.0f} conversations/s ({tokens / 2000:.0f} tokens each)")

    seconds, cls, _ = time_naive(records[:naive_n], args.tokenizer, args.template, None)
    rates["loop"] = naive_n / seconds
    print(f"LLaVA's loop, this env ({cls}): {rates['loop']:9,.0f} conversations/s")
    slow = None
    if has_slow_classes():
        seconds, cls, _ = time_naive(records[:naive_n], args.tokenizer, args.template, False)
        slow = {"rate": naive_n / seconds, "class": cls, "transformers": transformers.__version__}
    elif args.pinned_python:
        proc = subprocess.run([args.pinned_python, os.path.abspath(__file__), "--naive-only", "slow", "--n", str(args.n),
                               "--naive-n", str(naive_n), "--tokenizer", args.tokenizer, "--template", args.template],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(here)})
        if proc.returncode == 0:
            slow = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            print("pinned interpreter failed: " + proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
    if slow:
        rates["slow_loop"] = slow["rate"]
        print(f"LLaVA's loop, slow tokenizer ({slow['class']}, transformers {slow['transformers']}): "
              f"{slow['rate']:9,.0f} conversations/s")

    audit_tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True,
                                              **({"use_fast": False} if has_slow_classes() else {}))
    select = ("LD101", "LD102", "LD104", "LD105")
    start = cpu()
    one = audit_conversations(records, audit_tok, args.template, select=select)
    audit_one = cpu() - start
    rates["audit"] = args.n / audit_one
    data = one.stats["data"]
    print(f"audit, 1 process ({type(audit_tok).__name__}, lengths {data['lengths']}, {data['verified_samples']} "
          f"samples verified on the exact path): {rates['audit']:9,.0f} conversations/s, dropped {data['dropped']}")
    start = time.perf_counter()
    audit_conversations(records, audit_tok, args.template, select=select)
    wall_one = time.perf_counter() - start
    start = time.perf_counter()
    many = audit_conversations(records, audit_tok, args.template, select=select, workers=args.jobs)
    audit_many = time.perf_counter() - start
    print(f"audit, {args.jobs} worker(s), wall clock:     {args.n / audit_many:9,.0f} conversations/s (1 process: "
          f"{args.n / wall_one:,.0f}/s wall clock), dropped {many.stats['data']['dropped']}")
    print()
    print("| ratio | value |")
    print("|---|---|")
    print(f"| audit / floor (per core) | {rates['audit'] / rates['floor']:.0%} |")
    print(f"| audit / LLaVA's loop, this environment (per core) | {rates['audit'] / rates['loop']:.1f}x |")
    if "slow_loop" in rates:
        print(f"| audit / LLaVA's loop, slow tokenizer (per core) | {rates['audit'] / rates['slow_loop']:.1f}x |")
    print(f"| {args.jobs} workers / 1 process (wall clock) | {wall_one / audit_many:.2f}x |")


if __name__ == "__main__":
    main()
