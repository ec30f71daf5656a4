"""Conversation templates, the training code's label arithmetic (recipes) and the oracle.

- `conversation`: templates as data, `render` / `parse`.
- `codebase`: what each codebase's train.py does around preprocess (tokenizer loading, --version
  set-up, which records are multimodal, preprocess_multimodal, the environment's tokenizer API).
- `recipes`: `get_recipe(name).preprocess(...)`, `setup_tokenizer(...)` for llava-1.5 / llava / llava-next.
- `tokenize`: batched, cached tokenization; round lengths derived from the prompt's own tokens.
- `oracle`: the labels that should be learned, from character offsets.
- `analysis`: recipe + oracle + drift + likely cause per sample.
- `lookalike`: text that looks like an image placeholder but is not one.
- `grouping`: per-sample findings folded into one finding per cause.
- `suggest`: the (recipe, template, pad token) set-ups that fit.
- `audit`: `audit_conversations(...)`, the LD101-LD105 audit as a Python API (streaming, processes, torchrun).

Nothing is imported here, so that importing a submodule stays cheap.
"""
