"""Render docs/checks.md from the checks themselves, so the documentation cannot drift from the code.

    python -m llava_doctor.docs > docs/checks.md
"""
from __future__ import annotations

import inspect

from .registry import all_checks

HEADER = """# llava-doctor checks

Generated from the check classes by `python -m llava_doctor.docs > docs/checks.md`; do not edit by hand.
Codes are stable once released. Each entry says why the check exists (the real failure behind it),
what it reads, and how to fix what it finds.

| code | severity | artifact | title |
|---|---|---|---|
"""


def render_markdown() -> str:
    checks = all_checks()
    parts = [HEADER]
    parts.extend(f"| [{c}](#{c.lower()}) | {k.severity} | {', '.join(k.kinds())} | {k.title} |\n" for c, k in checks.items())
    for code, check in checks.items():
        parts.append(f"\n## {code}\n\n**{check.title}** — severity `{check.severity}`, artifact `{', '.join(check.kinds())}`"
                     f"{', reads tensor data (`--deep`)' if check.deep else ''}.\n\n")
        parts.append(inspect.cleandoc(check.rationale) + "\n\n")
        parts.append("**Fix.** " + inspect.cleandoc(check.fix) + "\n")
        if check.invalid or check.valid:
            parts.append("\n**Examples.** Fires on: " + "; ".join(e.name for e in check.invalid) + ".")
            if check.valid:
                parts.append(" Silent on: " + "; ".join(e.name for e in check.valid) + ".")
            parts.append("\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render_markdown(), end="")
