"""Generation smoke-test benchmark, as ratios in one run (run on purpose; pytest never collects this file).

    python benchmarks/bench_generate.py [--repeat 5] [--tokens 32] [--device cpu|cuda] [--skip-trained]

For each model, the same prompt and image, the same greedy length:

- plain: what a user's script does - the inputs built by the family's builder, ``model.generate``
  (greedy), the answer decoded;
- smoke: ``run_generation(neutral=False)`` - the same call with the forward hooks (logit health every
  step, non-finite flags of the tower, projector and every decoder layer, first-step captures) and the
  per-token decode;
- smoke + neutral: ``run_generation(neutral=True)`` - plus the blank/noise batch that stops once both
  rows answer differently.

Models: the bundled core's trained model (original-LLaVA layout, its answer depends on the image), the same
weights as a transformers Llava, and a ~160M-parameter random transformers Llava (CLIP 12x768 on 224px +
Llama 12x768) where the model's arithmetic, not Python, dominates. Targets (DESIGN.md §4): smoke < 1.2x plain,
smoke + neutral <= 2x plain. Reported: median seconds of `--repeat` runs (the three taking turns) after one warm-up each, and the ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def interleaved_medians(runs: dict, repeat: int) -> dict:
    """Median seconds of each run, the runs taking turns (one warm-up each) so that a machine whose load drifts
    (a shared CI box) weighs on all of them alike."""
    for run in runs.values():
        run()
    times: dict = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(label: str, model, tokenizer, build, image, tokens: int, repeat: int) -> dict:
    import torch

    from llava_doctor.artifacts.generation import run_generation

    def plain():
        inputs = build([image], "Describe the image.")
        with torch.no_grad():
            out = model.generate(**inputs.kwargs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 num_beams=1, pad_token_id=tokenizer.pad_token_id or 0)
        return tokenizer.decode(out[0], skip_special_tokens=True)

    def smoke(neutral: bool):
        generation_config = model.generation_config
        generation_config.min_new_tokens = tokens  # the same length as plain, whatever EOS says
        return run_generation(model, tokenizer, build, images=[("image", image)], prompts=["Describe the image."],
                              max_new_tokens=tokens, neutral=neutral)

    result = {"model": label, "parameters": sum(p.numel() for p in model.parameters())}
    medians = interleaved_medians({"plain": plain, "smoke": lambda: smoke(False), "neutral": lambda: smoke(True)}, repeat)
    result.update({f"{name}_s": seconds for name, seconds in medians.items()})
    model.generation_config.min_new_tokens = None
    result["smoke_ratio"] = result["smoke_s"] / result["plain_s"]
    result["neutral_ratio"] = result["neutral_s"] / result["plain_s"]
    return result


def big_hf_llava(folder: Path, tokenizer, device: str):
    """A ~160M-parameter random transformers Llava saved with a processor (the core's prompt template)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    import _generate_models as models
    from llava_doctor.core.builder import load_pretrained_model

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=16, projection_dim=512)
    text = LlamaConfig(vocab_size=320, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=1,
                       eos_token_id=2, pad_token_id=3)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=models.IMAGE_TOKEN, image_seq_length=196)
    LlavaForConditionalGeneration(config).save_pretrained(str(folder))
    processor_class = models._pil("CLIPImageProcessor")
    image_processor = processor_class(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=models.CORE_TEMPLATE, patch_size=16,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(str(folder))
    return load_pretrained_model(folder, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--big-repeat", type=int, default=3, help="repeats for the ~160M-parameter model")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-trained", action="store_true", help="skip the core's trained model (it trains once, ~30 s)")
    args = parser.parse_args()

    import torch

    import _generate_models as models
    from llava_doctor.core.builder import load_pretrained_model
    from llava_doctor.core.tokenizer import load_tokenizer
    from llava_doctor.quiet import quiet_libraries

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    image = models.held_out_images(1)[0][1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet_libraries():
        root = Path(tmp)
        tokenizer = load_tokenizer()
        if not args.skip_trained:
            model, tokenizer = models.trained_core(root)
            models.save_original(model, tokenizer, root / "original")
            models.save_hf_llava(model, tokenizer, root / "hf")
            for label, folder in (("core trained (original layout)", root / "original"), ("core trained (hf Llava)", root / "hf")):
                loaded = load_pretrained_model(folder, device=args.device)
                rows.append(measure(label, loaded.model, loaded.tokenizer, loaded.inputs_builder(), image, args.tokens, args.repeat))
        loaded = big_hf_llava(root / "big", tokenizer, args.device)
        big_image = image.resize((224, 224))
        rows.append(measure("random hf Llava ~160M", loaded.model, loaded.tokenizer, loaded.inputs_builder(), big_image,
                            args.tokens, args.big_repeat))
    print(f"{'model':34} {'params':>11} {'plain s':>8} {'smoke s':>8} {'+neutral s':>10} {'smoke/plain':>11} {'+neutral/plain':>14}")
    for row in rows:
        print(f"{row['model']:34} {row['parameters']:>11,} {row['plain_s']:8.3f} {row['smoke_s']:8.3f} {row['neutral_s']:10.3f} "
              f"{row['smoke_ratio']:11.2f} {row['neutral_ratio']:14.2f}")
    print(f"({args.tokens} new tokens, median of {args.repeat}, device {args.device}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
