"""loss-collapse: every label is -100, and the logged training loss reads 0.0."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import Scenario
from ._common import finite_or_none, quiet, shapes_dataset, tiny_model, tokenizer

STEPS = 20
LOGGING_STEPS = 5


def make(out: Path, fixed: bool) -> dict[str, Any]:
    import torch

    from ..core.data import IGNORE_INDEX, collate
    from ..core.stages import apply_stage
    from ..core.train import TrainConfig, train, write_trainer_state

    with quiet():
        tok = tokenizer()
        model = apply_stage(tiny_model(out), "finetune")
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def collate_fn(items):
            batch = collate(items, tok.pad_token_id)
            if not fixed:  # what LLaVA's preprocess does to every sample on a tokenization mismatch
                batch["labels"].fill_(IGNORE_INDEX)
            return batch

        supervised = []
        config = TrainConfig(steps=STEPS, batch_size=8, logging_steps=LOGGING_STEPS, warmup_steps=2)
        result = train(model, shapes_dataset(tok, 32), config, collate_fn=collate_fn,
                       on_step=lambda step, loss, norm, batch: supervised.append(int((batch["labels"] != IGNORE_INDEX).sum())))
        state_path = write_trainer_state(out / "trainer_state.json", result, config)
    weights_changed = any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    logged = [entry for entry in result.log_history if "loss" in entry]
    return {
        "steps": STEPS,
        "logging_steps": LOGGING_STEPS,
        "trainer_state": state_path.name,
        "supervised_tokens_per_batch": supervised,
        "logged_losses": [entry["loss"] for entry in logged],
        "logged_grad_norms": [finite_or_none(entry["grad_norm"]) for entry in logged],
        "step_losses": [finite_or_none(v) for v in result.losses],
        "nan_step_losses": sum(1 for v in result.losses if math.isnan(v)),
        "weights_changed": weights_changed,
    }


SCENARIO = Scenario(
    name="loss-collapse",
    title="Every label is -100: the logged training loss is 0.0",
    broken=f"""
        The bundled tiny LLaVA was fine-tuned for {STEPS} steps on batches whose labels are all -100 - what
        LLaVA's preprocess leaves when it drops every sample on a tokenization mismatch
        (target[:] = IGNORE_INDEX), or when a chat template lacks {{% generation %}} and the assistant mask
        is all zeros. The log is written to trainer_state.json every {LOGGING_STEPS} steps the way the HF
        Trainer writes log_history.""",
    fixed="""
        Same run with the labels the data actually has (answers and their </s> supervised): the logged
        loss falls from about ln(vocab) and the weights move.""",
    seen="""
        {'loss': 0.0, 'grad_norm': 0.0, 'learning_rate': 2.6490066225165566e-08, 'epoch': 0.0}
        (BAAI-DCAI/Bunny#75), and in the LLaVA logs before it, per sample:
            WARNING: tokenization mismatch: 102 vs. 104. (ignored)
        Training runs to the end; the model learns nothing.""",
    mechanism="""
        The step loss is transformers' causal-LM loss with mean reduction (the core's forward passes no
        num_items_in_batch), i.e. torch cross_entropy over zero supervised targets: NaN. Its gradient is
        zero everywhere, so the logged grad_norm is 0.0 and AdamW leaves the weights where they were. The
        loop logs like the HF Trainer with logging_nan_inf_filter (on by default): a NaN step loss is
        replaced by the running mean of the window (tr_loss / (1 + steps since the last log)), which is 0
        after every logging reset, so every logged loss is 0.0. The real HF Trainer is not run here; the
        filter arithmetic is the one in transformers/trainer.py. With num_items_in_batch (transformers'
        sum/num_items path) the step loss is 0/0 = NaN as well and the same filter logs 0.0.""",
    codes=("LD401", "LD402"),
    command="llava-doctor logs {out}/trainer_state.json",
    make=make,
)
