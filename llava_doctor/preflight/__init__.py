"""preflight: a training launch read as the training code reads it, before the first GPU-hour.

Engine modules: ``shell`` (bash scripts, expanded, never run), ``command``
(launchers and the training script's argv), ``arguments`` (HfArgumentParser's accepted set and rules),
``codebase`` (LLaVA or LLaVA-NeXT, and the checkout on disk), ``resolve`` (hub ids through the HF
cache), ``data`` / ``images`` (the records and their images, bounded), ``models`` (configs and what
the builders make of them), ``deepspeed_config``, ``policy`` (what trains), ``tokenizer`` and
``runner`` (the report); no core import in any of them. ``--smoke`` builds the model with the bundled core,
so it lives there (``llava_doctor.core.smoke``, a client); the CLI imports it. The Launch artifact itself
is ``llava_doctor.artifacts.launch``.
"""
