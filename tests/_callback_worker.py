"""torchrun worker for tests/test_callback.py: LlavaDoctorCallback on a ZeRO-3 engine at world size 2.

Rank 1 alone masks every label of its micro-batch at step 2; both ranks must report it (the counts
are summed over ranks) and stop together, and only rank 0 warns. Writes OUT/rank{r}.json.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist

    from llava_doctor import LlavaDoctorCallback
    from llava_doctor.core.configs import prepare_vision_tower, tiny_config
    from llava_doctor.core.data import ConversationDataset, build_samples, collate
    from llava_doctor.core.distributed import init_cpu_distributed
    from llava_doctor.core.model import build_model
    from llava_doctor.core.stages import apply_stage
    from llava_doctor.core.tokenizer import load_tokenizer
    from llava_doctor.core.train import TrainConfig, build_zero3_model, deepspeed_config, train_deepspeed

    torch.set_num_threads(1)
    init_cpu_distributed()
    rank = dist.get_rank()
    if rank == 0:
        prepare_vision_tower(out / "towers", "clip", pretrain_steps=0)
    dist.barrier()
    config = tiny_config(vision_tower=prepare_vision_tower(out / "towers", "clip", pretrain_steps=0))
    tokenizer = load_tokenizer()
    calls = iter(range(1, 10**6))

    def collate_fn(items):
        batch = collate(items, tokenizer.pad_token_id)
        if next(calls) == 2 and rank == 1:
            batch["labels"].fill_(-100)
        return batch

    ds_config = deepspeed_config(3)
    model = build_zero3_model(lambda: apply_stage(build_model(config, seed=0), "finetune"), ds_config)
    doctor = LlavaDoctorCallback(on_problem="stop", select=("LD4", "LD104"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doctor.on_train_begin(model=model)
        _, result = train_deepspeed(model, ConversationDataset(build_samples(32, seed=5), tokenizer),
                                    TrainConfig(steps=4, batch_size=4, warmup_steps=1), ds_config=ds_config,
                                    collate_fn=collate_fn, on_step=doctor.observe_step)
    report = {
        "rank": rank, "global_step": result.global_step, "should_stop": doctor.should_stop,
        "findings": [[f.code, f.extra.get("first_step"), f.message] for f in doctor.findings],
        "warnings": sum(1 for w in caught if "llava-doctor" in str(w.message)),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
