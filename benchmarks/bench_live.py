"""Live-inspection benchmarks, as ratios in one run (run on purpose; pytest never collects this file).

    python benchmarks/bench_live.py                      # CPU: the bundled core, a ~100M transformers Llava, a 7B on meta
    python benchmarks/bench_live.py --device cuda        # GPU: a llava-1.5-7b-sized model in bf16, plain and ZeRO-3 (world 1)

Train-start inspection (`llava_doctor.inspect(model, optimizer=..., stage=...)`: every live check, every value
statistic) against one training step of the same model (forward + backward + optimizer step), and the value pass
alone against the naive way (one host synchronisation per tensor: `isfinite(p).all().item()`, `p.mean().item()`,
`p.std().item()`) and against the floor (one reduction over every parameter, `sum` with one sync). The 7B model is
built on the meta device and materialised with `to_empty` on the GPU, then filled with random values (no download);
the ZeRO-3 variant builds it under `deepspeed.zero.Init` (world size 1, NCCL) and is inspected on its partitions.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeat: int, sync=lambda: None) -> float:
    """Median wall time of `fn()` over `repeat` runs (after one warm-up)."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def naive_values(model, sync) -> None:
    """What a script would write: per tensor, three host round trips."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            bool(torch.isfinite(param).all().item())
            float(param.float().mean().item())
            float(param.float().std().item())
    sync()


def floor_values(model, sync) -> None:
    """One reduction over every element and one synchronisation: no check can read less."""
    import torch

    with torch.no_grad():
        total = torch.stack([p.sum(dtype=torch.float32) for p in model.parameters()]).sum()
    float(total)


def values_pass(model) -> None:
    from llava_doctor.artifacts.live import inspect_model

    inspect_model(model).values()


# ----------------------------------------------------------------------------- models


def hf_llava_config(size: str):
    import transformers

    if size == "100m":
        text = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                                        num_attention_heads=12, num_key_value_heads=12)
        vision = transformers.CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=4,
                                               num_attention_heads=6, image_size=224, patch_size=32)
    else:  # llava-1.5-7b
        text = transformers.LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=32)
        vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                               num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    return transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=text.vocab_size - 1)


def hf_batch(config, batch: int, text_tokens: int, device):
    import torch

    vision = config.vision_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    ids = torch.randint(0, config.text_config.vocab_size - 2, (batch, text_tokens + image_tokens), device=device)
    ids[:, 1:1 + image_tokens] = config.image_token_index
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, device=device)
    return {"input_ids": ids, "pixel_values": pixels, "labels": ids.masked_fill(ids == config.image_token_index, -100)}


def core_model_and_batch(tower_root: str):
    from llava_doctor.core.data import ConversationDataset, build_samples, collate
    from llava_doctor.core.model import build_tiny_model
    from llava_doctor.core.stages import apply_stage
    from llava_doctor.core.tokenizer import load_tokenizer

    model = apply_stage(build_tiny_model(tower_root, pretrain_steps=0), "finetune")
    tokenizer = load_tokenizer()
    dataset = ConversationDataset(build_samples(8, seed=0), tokenizer)
    return model, collate([dataset[i] for i in range(4)], tokenizer.pad_token_id)


def train_step(model, optimizer, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- runs


def cpu_case(name: str, model, batch, repeat: int) -> dict:
    import torch

    import llava_doctor

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step = timed(lambda: train_step(model, optimizer, batch), repeat)
    inspect = timed(lambda: llava_doctor.inspect(model, optimizer=optimizer, stage="finetune"), repeat)
    values = timed(lambda: values_pass(model), repeat)
    naive = timed(lambda: naive_values(model, lambda: None), repeat)
    floor = timed(lambda: floor_values(model, lambda: None), repeat)
    params = sum(p.numel() for p in model.parameters())
    return {"case": name, "parameters": params, "train_step_s": step, "inspect_s": inspect,
            "inspect_per_step": inspect / step, "values_s": values, "naive_values_s": naive, "floor_s": floor,
            "values_vs_naive": values / naive, "values_vs_floor": values / floor}


def meta_case(repeat: int) -> dict:
    """The structure-only part of a 7B inspection (component map, shapes vs config, stage policy) on `meta`:
    what `inspect` costs before any value statistic."""
    import torch
    import transformers

    import llava_doctor

    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(hf_llava_config("7b"))
    inspect = timed(lambda: llava_doctor.inspect(model, stage="finetune"), repeat)
    return {"case": "transformers Llava 7B-sized on meta (structure only)", "parameters": sum(p.numel() for p in model.parameters()),
            "inspect_s": inspect}


def gpu_case(zero3: bool, repeat: int) -> dict:
    import torch
    import transformers

    import llava_doctor

    config = hf_llava_config("7b")
    sync = torch.cuda.synchronize
    if zero3:
        import deepspeed
        from transformers.initialization import no_init_weights

        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="nccl")
        ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "bf16": {"enabled": True}}
        with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds, dtype=torch.bfloat16):
            model = transformers.LlavaForConditionalGeneration(config)
        with torch.no_grad():
            for param in model.parameters():
                param.ds_tensor.normal_(0, 0.02)
    else:
        with torch.device("meta"):
            model = transformers.LlavaForConditionalGeneration(config).to(torch.bfloat16)
        model.to_empty(device="cuda")
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, 0.02)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    sync()
    inspect = timed(lambda: llava_doctor.inspect(model, stage="pretrain"), repeat, sync)
    values = timed(lambda: values_pass(model), repeat, sync)
    result = {"case": f"llava-1.5-7b bf16 on {torch.cuda.get_device_name()}" + (" ZeRO-3 world 1" if zero3 else ""),
              "parameters": sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters()),
              "inspect_s": inspect, "values_s": values}
    if not zero3:
        result["naive_values_s"] = timed(lambda: naive_values(model, sync), 1, sync)
        result["floor_s"] = timed(lambda: floor_values(model, sync), repeat, sync)
        result["values_vs_naive"] = values / result["naive_values_s"]
        result["values_vs_floor"] = values / result["floor_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zero3", action="store_true", help="GPU only: also the ZeRO-3 (world size 1) case")
    parser.add_argument("--tower-root", default=None, help="where the core's base tower is cached (default: a temp dir)")
    args = parser.parse_args()
    import tempfile

    import torch

    results = []
    if args.device == "cpu":
        import transformers

        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        model, batch = core_model_and_batch(args.tower_root or tempfile.mkdtemp(prefix="bench-live-"))
        results.append(cpu_case("bundled core (tiny original LLaVA)", model, batch, args.repeat))
        config = hf_llava_config("100m")
        model = transformers.LlavaForConditionalGeneration(config)
        results.append(cpu_case("transformers Llava ~100M (CLIP + Llama)", model, hf_batch(config, 2, 64, "cpu"), args.repeat))
        results.append(meta_case(args.repeat))
    else:
        results.append(gpu_case(False, args.repeat))
        torch.cuda.empty_cache()
        if args.zero3:
            results.append(gpu_case(True, args.repeat))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
