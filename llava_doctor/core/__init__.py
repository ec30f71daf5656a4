"""The bundled LLaVA training/model core: tiny, real, CPU-friendly (see DESIGN.md §2).

Modules (import them directly; this package imports nothing heavy):

- ``configs``: ``tiny_config`` (original-LLaVA ``LlavaLlamaConfig`` / ``LlavaQwenConfig``),
  ``prepare_vision_tower`` (a seeded base CLIP/SigLIP tower in a local folder, cached)
- ``vision``: ``VisionTower`` with LLaVA's delay_load / load_model / feature selection
- ``projector``: ``build_projector`` (linear, mlp{N}x_gelu, identity)
- ``model``: ``LlavaLlamaForCausalLM`` / ``LlavaQwenForCausalLM`` (original key layout, image
  splice), ``build_tiny_model``, ``generate_greedy``
- ``tokenizer``: the shipped BPE tokenizer (``load_tokenizer``)
- ``images`` / ``data``: the synthetic shapes dataset, LLaVA JSON + PNG writer, template, collate
- ``stages``: ``apply_stage`` (pretrain / finetune / lora), ``trainable_summary``
- ``train``: plain loop, DeepSpeed ZeRO-2/3 on CPU, ``trainer_state.json``; ``ds_train`` is the
  torchrun entry point; ``learn``: the healthy reference run and its held-out accuracy
- ``distributed``: DeepSpeed on CPU without JIT builds; ``savers``: what real systems write
"""
