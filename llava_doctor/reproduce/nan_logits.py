"""nan-logits: activations beyond the float16 range turn the logits into NaN; greedy decoding emits id 0 forever."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from . import Scenario
from ._common import finite_or_none, quiet
from ._trained import held_out_sample, trained_model

FP16_MAX = 65504.0
MAX_NEW_TOKENS = 12
# The tensors that write into the residual stream; scaling all of them by c multiplies the whole stream
# by c and, since every RMSNorm divides by the stream's RMS, leaves the model's function unchanged.
_RESIDUAL_WRITERS = re.compile(r"^(model\.embed_tokens\.weight|model\.layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)\.weight"
                               r"|model\.mm_projector\.\d+\.(weight|bias))$")


def residual_writers(state: Mapping[str, Any]) -> list[str]:
    """The keys that write into the residual stream (for the projector only its last Linear)."""
    keys = [k for k in state if _RESIDUAL_WRITERS.match(k)]
    projector = sorted({k.split(".")[2] for k in keys if k.startswith("model.mm_projector.")}, key=int)
    last = projector[-1] if projector else None
    return [k for k in keys if not k.startswith("model.mm_projector.") or k.split(".")[2] == last]


def scale_residual_stream(model, factor: float) -> None:
    """Multiply the residual stream by `factor` (a function-preserving reparametrisation, RMSNorm is scale-free).

    This is how "massive activations" look in real LLMs (Qwen2 in fp16, QwenLM/Qwen3#761): the
    weights are representable, but the hidden states outgrow float16's 65504.
    """
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for key in residual_writers(state):
            state[key].mul_(factor)


def overflow_factor(model, headroom: float = 0.5) -> float:
    """The largest factor that keeps every scaled weight representable in float16 (times `headroom`)."""
    state = model.state_dict()
    largest = max(float(state[k].abs().max()) for k in residual_writers(state))
    return headroom * FP16_MAX / largest


def first_nonfinite_module(model, run) -> str | None:
    """Name of the first module (in execution order) whose output holds a non-finite value during `run()`."""
    import torch

    found: list[str] = []
    hooks = []

    def hook(name):
        def check(_module, _inputs, output):
            tensor = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
            if not found and isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                found.append(name)
        return check

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        run()
    finally:
        for handle in hooks:
            handle.remove()
    return found[0] if found else None


def make(out: Path, fixed: bool) -> dict[str, Any]:
    import torch

    from ..core import savers
    from ..core.data import DESCRIBE_PROMPT, image_to_tensor
    from ..core.images import write_png
    from ..core.model import generate_greedy

    with quiet():
        model, tok = trained_model(out)
        sample = held_out_sample()
        reference = generate_greedy(model, tok, sample.image, DESCRIBE_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
        factor = overflow_factor(model)
        scale_residual_stream(model, factor)
        fp32 = generate_greedy(model, tok, sample.image, DESCRIBE_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
        dtype = torch.bfloat16 if fixed else torch.float16
        model.to(dtype)
        weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        result = generate_greedy(model, tok, sample.image, DESCRIBE_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
        prompt = torch.tensor([result.prompt_ids])
        image = image_to_tensor(sample.image).unsqueeze(0).to(dtype)
        culprit = first_nonfinite_module(model, lambda: model(input_ids=prompt, images=image))
        with torch.no_grad():
            hidden = model(input_ids=prompt, images=image, output_hidden_states=True).hidden_states
        savers.save_llava_original(model, out / "model")
        tok.save_pretrained(str(out / "model"))  # LLaVA's trainer saves the tokenizer beside the weights
        write_png(out / "image.png", sample.image)
    generation = {
        "dtype": str(dtype).replace("torch.", ""),
        "prompt": DESCRIBE_PROMPT,
        "image": "image.png",
        "prompt_ids": result.prompt_ids,
        "generated_ids": result.token_ids,
        "generated_text": result.text,
        "all_logits_finite": result.all_logits_finite,
        "first_nonfinite_module": culprit,
        "token_0": tok.convert_ids_to_tokens(0),
    }
    savers.write_json(out / "generation.json", generation)
    return {
        **generation,
        "model": "model",
        "generation": "generation.json",
        "truth": f"{sample.color} {sample.shape} at the {sample.position}",
        "residual_scale": factor,
        "weights_finite": weights_finite,
        "hidden_states_finite": all(bool(torch.isfinite(h).all()) for h in hidden),
        "max_abs_hidden_state": finite_or_none(max(float(h.float().abs().max()) for h in hidden)),
        "fp32_text_before_scaling": reference.text,
        "fp32_text_after_scaling": fp32.text,
        "fp32_ids_after_scaling": fp32.token_ids,
    }


SCENARIO = Scenario(
    name="nan-logits",
    title="float16 overflow: NaN logits, greedy decoding emits token id 0 forever",
    broken="""
        A briefly trained bundled tiny LLaVA had its residual stream scaled up (embeddings, attention and
        MLP output projections, the projector's last Linear, all by the same factor) - a
        function-preserving change, since every RMSNorm divides the stream by its RMS: in float32 the
        model answers exactly as before. Every weight still fits float16. The model was then cast to
        float16, as `--fp16 True` or torch_dtype=torch.float16 at inference does, and asked to describe
        image.png greedily. The hidden states pass 65504, become inf, the next RMSNorm turns inf/inf into
        NaN, the logits are all NaN, and argmax of an all-NaN row is index 0. generation.json records the
        ids; model/ holds the float16 weights (all finite) and the tokenizer.""",
    fixed="""
        The same weights in bfloat16 (same exponent range as float32): the hidden states stay finite and the
        model answers in words (bfloat16 rounding may change a word against float32; both answers are in
        scenario.json). The maintainers' advice: "if you could run with bfloat16,
        please run with bfloat16" (QwenLM/Qwen3#761).""",
    seen="""
        ['!!!!!!!!!!!'] (LLaVA-VL/LLaVA-NeXT#155, #285): in Qwen2's vocabulary id 0 is "!". Qwen2-7B in
        fp16: "outputs are all exclamation marks, other precisions are fine ... fp16 logits contain many
        NaN values" (QwenLM/Qwen3#761); vllm-project/vllm#22518 "generates only exclamation marks
        (token 0)". With sampling instead of greedy decoding:
            RuntimeError: probability tensor contains either `inf`, `nan` or element < 0
        (haotian-liu/LLaVA#726, #886). The bundled tokenizer's id 0 is <unk>, so here the run of id 0
        decodes to nothing.""",
    mechanism="""
        Real 7B models reach such activations through training (a few "massive activation" channels in
        the residual stream); a tiny model trained for seconds does not, so the scale is induced by the
        exact reparametrisation above. scenario.json shows that the float32 answer is the same before and
        after it ("fp32_text_before_scaling" / "fp32_text_after_scaling") and names the first module whose
        float16 output is non-finite.""",
    codes=("LD502", "LD503"),
    command="llava-doctor generate {out}/model --image {out}/image.png",
    make=make,
)
