"""What the running transformers has: a test whose subject is a class this release lacks is skipped, saying so
(LlavaNext arrived in transformers 4.39, LlavaOnevision in 4.45; LLaVA's pin is 4.37.2)."""
from __future__ import annotations

import pytest


def has(name: str) -> bool:
    import transformers

    return hasattr(transformers, name)


def needs(name: str) -> pytest.MarkDecorator:
    import transformers

    return pytest.mark.skipif(not has(name), reason=f"transformers {transformers.__version__} has no {name}")
