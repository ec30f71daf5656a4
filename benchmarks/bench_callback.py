"""LlavaDoctorCallback's cost against a training step of the same model, one run, CPU.

    python benchmarks/bench_callback.py [--steps 5] [--skip-large]

Two models: the bundled core (tiny original-LLaVA tree) and a transformers-native Llava of ~100M
parameters (Llama 12 x 768, vocab 32000, a small CLIP). For each, one training step (forward,
backward, clip, AdamW) is the floor a training loop pays anyway; the callback's per-step work is
what it adds, driven exactly as the HF Trainer drives it: the forward pre-hook that reads the
labels, ``on_step_end`` (one device read and, under DDP, one all-reduce for the label counts) and
``on_log`` with a log at EVERY step (the worst case; real runs log every 1-10 steps). The naive way
to count labels is a per-sample ``.item()`` loop. Train-start work (``on_train_begin``: the live
inspection) is compared with one step too. Ratios are what matter; never run by pytest.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, model, batches, steps: int) -> dict:
    import torch
    from transformers.trainer_callback import TrainerControl, TrainerState

    from llava_doctor import LlavaDoctorCallback

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(batches[0])  # warm-up (first-call allocations)
    step_times = []
    for i in range(steps):
        start = time.perf_counter()
        step(batches[i % len(batches)])
        step_times.append(time.perf_counter() - start)
    step_time = statistics.median(step_times)

    doctor = LlavaDoctorCallback(on_problem="warn", stage="finetune")
    state, control = TrainerState(), TrainerControl()
    args = argparse.Namespace(logging_strategy="steps")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doctor.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    begin = time.perf_counter() - start

    labels = batches[0]["labels"]
    counter = doctor._labels
    hook = median_time(lambda: counter.add(labels), 50)  # what the forward pre-hook does per micro-batch
    counter.pending.clear()

    def per_step():
        counter.add(labels)
        state.global_step += 1
        doctor.on_step_end(args, state, control)
        doctor.on_log(args, state, control, logs={"loss": 2.0 + 0.01 * state.global_step,
                                                   "grad_norm": 1.0 + 0.001 * state.global_step,
                                                   "learning_rate": 1e-5, "epoch": 0.0})

    state.global_step = 10  # past step 1 (where it asks for an extra log)
    callback = median_time(per_step, 50)

    def naive():
        return [int((row[1:] != -100).sum().item()) for row in labels]

    naive_time = median_time(naive, 50)
    doctor.on_train_end(args, state, control)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": params, "step_s": step_time, "train_begin_s": begin, "hook_s": hook,
            "callback_step_s": callback, "naive_label_count_s": naive_time}


def core_case(steps: int) -> dict:
    import tempfile

    from llava_doctor.core.configs import prepare_vision_tower, tiny_config
    from llava_doctor.core.data import ConversationDataset, build_samples, collate
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage
    from llava_doctor.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    config = tiny_config(vision_tower=prepare_vision_tower(Path(tempfile.mkdtemp()) / "towers", "clip", pretrain_steps=0))
    dataset = ConversationDataset(build_samples(64, seed=0), tokenizer)
    batches = [collate([dataset[i] for i in range(8 * b, 8 * b + 8)], tokenizer.pad_token_id) for b in range(4)]
    return measure("bundled core (tiny)", apply_stage(build_model(config), "finetune"), batches, steps)


def large_case(steps: int) -> dict:
    import torch

    import _train_fixtures as fx

    model = fx.tiny_llava(hidden=768, layers=12, vocab=32000, heads=12, vision_hidden=256, image_size=64, patch=8)
    config = model.config
    dataset = fx.ImageTextDataset(config, size=8, text=192, answer=96)
    collate = fx.collator()
    batches = [collate([dataset[i] for i in range(2 * b, 2 * b + 2)]) for b in range(2)]
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}  # not a fresh init
    model.load_state_dict(state)
    next(m for n, m in model.named_modules() if n.endswith("vision_tower")).requires_grad_(False)
    return measure("transformers Llava (~100M)", model, batches, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-large", action="store_true")
    options = parser.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    hf_logging.set_verbosity_error()
    rows = [core_case(options.steps)] + ([] if options.skip_large else [large_case(max(2, options.steps // 2))])
    print(f"{'model':30} {'params':>11} {'step':>10} {'callback/step':>14} {'ratio':>8} {'of it: hook':>12} "
          f"{'naive count':>12} {'train start':>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['model']:30} {r['parameters']:>11,} {r['step_s'] * 1e3:>8.1f}ms {r['callback_step_s'] * 1e6:>12.0f}us "
              f"{r['callback_step_s'] / r['step_s']:>8.3%} {r['hook_s'] * 1e6:>10.0f}us "
              f"{r['naive_label_count_s'] * 1e6:>10.0f}us {r['train_begin_s'] * 1e3:>10.1f}ms "
              f"{r['train_begin_s'] / r['step_s']:>7.2f}")
    print("callback/step: hook + on_step_end + on_log with a log at every step; ratio = per-step work / one training "
          "step (target < 1 %); train start: on_train_begin (the live inspection) / one step (target < 1).")


if __name__ == "__main__":
    main()
