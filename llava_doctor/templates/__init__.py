"""Conversation templates, the training code's label arithmetic (recipes) and the oracle.

- `conversation`: templates as data, `render` / `parse`.
- `recipes`: `get_recipe(name).preprocess(...)`, `setup_tokenizer(...)` for llava-1.5 / llava / llava-next.
- `oracle`: the labels that should be learned, from character offsets.
- `analysis`: recipe + oracle + drift + likely cause per sample (batched tokenization).
- `audit`: `audit_conversations(...)`, the LD101-LD105 audit as a Python API (processes, torchrun).

Nothing is imported here, so that importing a submodule stays cheap.
"""
