"""Train the tiny model with the real DeepSpeed engine; runnable under torchrun for world size 2.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 \\
        -m llava_doctor.core.ds_train --stage 3 --out DIR [--steps 3] [--save-16bit]

Writes ``DIR/checkpoint`` (``engine.save_checkpoint``), optionally ``DIR/hf16`` (gathered 16-bit
weights; needs ``stage3_gather_16bit_weights_on_model_save``), and ``DIR/rank{r}.json`` per rank
(world size, losses, local/full parameter counts) so callers can verify every rank ran.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist

    from .configs import prepare_vision_tower, tiny_config
    from .data import ConversationDataset, default_splits
    from .distributed import init_cpu_distributed
    from .model import build_model
    from .stages import apply_stage, trainable_summary
    from .tokenizer import load_tokenizer
    from .train import TrainConfig, build_zero3_model, deepspeed_config, train_deepspeed

    torch.set_num_threads(1)
    init_cpu_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    if rank == 0:  # one writer for the shared base tower, the others wait for it
        tower = prepare_vision_tower(args.tower_root or out / "towers", args.vision, pretrain_steps=args.tower_pretrain_steps)
    dist.barrier()
    tower = prepare_vision_tower(args.tower_root or out / "towers", args.vision, pretrain_steps=args.tower_pretrain_steps)
    config = tiny_config(args.llm, args.vision, vision_tower=tower)
    ds_config = deepspeed_config(args.stage, bf16=args.bf16, gather_16bit_weights_on_model_save=args.save_16bit)

    def factory():
        return apply_stage(build_model(config, seed=args.seed), args.train_stage)

    model = build_zero3_model(factory, ds_config) if args.stage == 3 else factory()
    tokenizer = load_tokenizer()
    train_samples, _ = default_splits(n_train=max(64, args.batch_size * world_size * 2), seed=args.seed)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, logging_steps=1, warmup_steps=1)
    engine, result = train_deepspeed(model, ConversationDataset(train_samples, tokenizer), train_config, ds_config=ds_config)
    engine.save_checkpoint(str(out / "checkpoint"))
    if args.save_16bit:
        engine.save_16bit_model(str(out / "hf16"))
    summary = trainable_summary(engine.module)
    report = {
        "rank": rank,
        "world_size": world_size,
        "zero_stage": args.stage,
        "losses": result.losses,
        "log_history": result.log_history,
        "local_numel": sum(p.numel() for p in engine.module.parameters()),
        "full_numel": sum(c.total for c in summary.values()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, choices=(2, 3), default=3, help="ZeRO stage")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm", choices=("llama", "qwen2"), default="llama")
    parser.add_argument("--vision", choices=("clip", "siglip"), default="clip")
    parser.add_argument("--train-stage", choices=("pretrain", "finetune"), default="finetune")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--save-16bit", action="store_true")
    parser.add_argument("--tower-root", default=None, help="folder caching base towers (default OUT/towers)")
    parser.add_argument("--tower-pretrain-steps", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
