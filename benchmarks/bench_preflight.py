"""preflight's cost beside the data audit, in fresh processes (run on purpose; pytest never collects this file).

    python benchmarks/bench_preflight.py [--records 100000] [--repeat 3] [--keep DIR]

Builds a LLaVA v1.5 finetune workdir - a Vicuna config with its real tokenizer, a CLIP config, a
ZeRO-3 config, a projector adapter, and --records training records whose images are links to one
PNG - then times, each in a fresh process:
  floor      python -c "import torch" (reading the adapter's tensor table and DeepSpeed's config
             model both import torch: no launch check can cost less)
  preflight  `llava-doctor preflight --ignore LD1 finetune.sh` (everything but the tokenization audit:
             parsing, references, adapter, DeepSpeed validation, LD301/LD90x, the image references)
  + audit    the same with the tokenization audit (LD101-LD105) of every record
and prints the medians and preflight / floor. Target: preflight < 5 s beside the audit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "data" / "preflight" / "finetune.sh"
TOKENIZER = Path(os.environ.get("LLAVA_DOCTOR_TOKENIZERS", ROOT.parent / "shared" / "fixtures" / "tokenizers")) / "vicuna-7b-v1.5"
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")


def build(root: Path, records: int) -> list[str]:
    import torch
    from PIL import Image

    def write(path: Path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    llm, tower = root / "models" / "vicuna", root / "models" / "clip"
    write(llm / "config.json", {"model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "vocab_size": 32000})
    for file in TOKENIZER.iterdir():
        shutil.copy(file, llm / file.name)
    write(tower / "config.json", {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24,
                                  "image_size": 336, "patch_size": 14})
    write(root / "scripts" / "zero3.json", {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                                            "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                                                  "stage3_gather_16bit_weights_on_model_save": True}})
    adapter = root / "checkpoints" / "llava-v1.5-13b-pretrain" / "mm_projector.bin"
    adapter.parent.mkdir(parents=True)
    torch.save({"model.mm_projector.0.weight": torch.zeros(5120, 1024, dtype=torch.bfloat16),
                "model.mm_projector.0.bias": torch.zeros(5120, dtype=torch.bfloat16),
                "model.mm_projector.2.weight": torch.zeros(5120, 5120, dtype=torch.bfloat16),
                "model.mm_projector.2.bias": torch.zeros(5120, dtype=torch.bfloat16)}, adapter)
    images = root / "playground" / "data" / "coco"
    images.mkdir(parents=True)
    Image.new("RGB", (640, 480), (20, 90, 160)).save(images / "base.jpg")
    data = []
    for k in range(records):
        (images / f"{k:09d}.jpg").symlink_to(images / "base.jpg")
        data.append({"id": str(k), "image": f"coco/{k:09d}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown in the picture?"},
            {"from": "gpt", "value": f"A blue rectangle, number {k}."}]})
    write(root / "playground" / "data" / "llava_v1_5_mix665k.json", data)
    return ["--map", f"lmsys/vicuna-13b-v1.5={llm}", "--map", f"openai/clip-vit-large-patch14-336={tower}"]


def timed(command: list[str], cwd: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", default=None)
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-preflight-"))
    maps = build(root, args.records) if not (root / "models").exists() else \
        ["--map", f"lmsys/vicuna-13b-v1.5={root / 'models' / 'vicuna'}",
         "--map", f"openai/clip-vit-large-patch14-336={root / 'models' / 'clip'}"]
    cli = [sys.executable, "-m", "llava_doctor", "preflight", *maps]
    floor = timed([sys.executable, "-c", "import torch"], root, args.repeat)
    checks = timed([*cli, "--ignore", "LD1", str(SCRIPT)], root, args.repeat)
    full = timed([*cli, str(SCRIPT)], root, max(1, args.repeat // 2))
    print(json.dumps({"records": args.records, "floor_import_torch_s": round(floor, 2),
                      "preflight_without_audit_s": round(checks, 2), "preflight_with_audit_s": round(full, 2),
                      "preflight_over_floor": round(checks / floor, 2), "audit_s": round(full - checks, 2)}, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
