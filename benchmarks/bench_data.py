"""Tokenization audit vs a LLaVA-style per-sample preprocessing loop, same data, one run.

    python benchmarks/bench_data.py [--n 100000] [--tokenizer DIR] [--template v1] [--jobs N]

The baseline is this project's own re-implementation of the *shape* of LLaVA's preprocess_v1 loop
(per sample: render, tokenize the prompt with tokenizer_image_token through the transformers
call, a torch tensor, one transformers call per round and per instruction, tensor masking). The
audit (LD101-LD105: the recipe's arithmetic AND the oracle AND the checks) batches every text of a
chunk into one Rust call. Both run single-threaded for the one-core numbers (RAYON_NUM_THREADS=1);
"all cores" runs the audit with --jobs worker processes. Never run by pytest.
"""
from __future__ import annotations

import argparse
import os
import random
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


def naive_loop(records: list[dict], tokenizer, template_name: str) -> int:
    """Per-sample preprocessing the way LLaVA's training code is shaped (re-implemented, not copied)."""
    import torch

    from llava_doctor.templates.conversation import get_template, render

    t = get_template(template_name)
    sep = t.sep + t.roles[1] + ": "
    bos = tokenizer.bos_token_id

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
    for record in records:
        has_image = "image" in record
        messages = []
        for turn in record["conversations"]:
            value = turn["value"]
            if has_image and "<image>" in value:
                value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
            messages.append(value)
        prompt = render(t, messages).text
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
            if i != 0 and not tokenizer.legacy:
                round_len -= 1
                instruction_len -= 1
            target[cur:cur + instruction_len] = -100
            cur += round_len
        target[cur:] = -100
        if cur < tokenizer.model_max_length and cur != total:
            target[:] = -100
            dropped += 1
    return dropped


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_tok = os.path.join(here, "..", "..", "shared", "fixtures", "tokenizers", "vicuna-7b-v1.5")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tokenizer", default=os.environ.get("LLAVA_DOCTOR_BENCH_TOKENIZER", default_tok))
    parser.add_argument("--template", default="v1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--naive-n", type=int, default=None,
                        help="Time the naive loop on this many samples and scale (default: all)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llava_doctor.templates.audit import audit_conversations
    from llava_doctor.templates.recipes import setup_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    records = generate(args.n)
    print(f"{args.n} conversations, tokenizer {os.path.basename(os.path.normpath(args.tokenizer))}, "
          f"template {args.template}, {os.cpu_count()} cpu(s) visible")

    configured = setup_tokenizer(tokenizer, "llava", args.template)
    naive_n = min(args.naive_n or args.n, args.n)
    start = time.perf_counter()
    naive_dropped = naive_loop(records[:naive_n], configured, args.template)
    naive = (time.perf_counter() - start) * args.n / naive_n
    print(f"naive per-sample loop, 1 core: {naive:8.2f} s{' (scaled from %d)' % naive_n if naive_n < args.n else ''}"
          f"  ({naive_n / (naive * naive_n / args.n):,.0f} samples/s, dropped {naive_dropped})")

    start = time.perf_counter()
    one = audit_conversations(records, tokenizer, args.template, select=("LD101", "LD102", "LD104", "LD105"))
    audit_one = time.perf_counter() - start
    print(f"audit, 1 core:                 {audit_one:8.2f} s  ({args.n / audit_one:,.0f} samples/s, "
          f"dropped {one.stats['data']['dropped']})")

    start = time.perf_counter()
    many = audit_conversations(records, tokenizer, args.template, select=("LD101", "LD102", "LD104", "LD105"),
                               workers=args.jobs)
    audit_many = time.perf_counter() - start
    print(f"audit, {args.jobs} worker(s):          {audit_many:8.2f} s  ({args.n / audit_many:,.0f} samples/s, "
          f"dropped {many.stats['data']['dropped']})")
    print(f"ratio per core (naive / audit):         {naive / audit_one:6.1f}x")
    print(f"ratio all cores (naive 1 core / audit {args.jobs}): {naive / audit_many:6.1f}x")
    print(f"scaling ({args.jobs} workers vs 1):              {audit_one / audit_many:6.2f}x")


if __name__ == "__main__":
    main()
