"""The check documentation, rendered from the check classes so that it cannot drift from the code.

One source, three readers: `docs/checks.md` (``python -m llava_doctor.docs > docs/checks.md``),
which the wheel ships as ``llava_doctor/reference/checks.md`` (SARIF's ``helpUri`` points at the
installed copy); ``llava-doctor explain CODE``, which renders one check - built-in or third-party -
from its class; and SARIF's per-rule ``help`` text.
"""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

from .registry import Check, all_checks

REFERENCE_FILE = "checks.md"  # docs/checks.md, shipped as the package data llava_doctor/reference/checks.md

HEADER = """# llava-doctor checks

Generated from the check classes by `python -m llava_doctor.docs > docs/checks.md`; do not edit by hand.
Codes are stable once released. Each entry says why the check exists (the real failure behind it),
what it reads, and how to fix what it finds. `llava-doctor explain CODE` prints the same text for any
installed check, third-party ones included.

| code | severity | artifact | title |
|---|---|---|---|
"""


def _one_paragraph(text: str) -> str:
    return " ".join(inspect.cleandoc(text).split())


def _reads(check: type[Check]) -> str:
    return f"artifact `{', '.join(check.kinds())}`" + (", reads tensor data (`--deep`)" if check.deep else "")


def _examples(check: type[Check]) -> str:
    parts = []
    if check.invalid:
        parts.append("Fires on: " + "; ".join(e.name for e in check.invalid) + ".")
    if check.valid:
        parts.append("Silent on: " + "; ".join(e.name for e in check.valid) + ".")
    return " ".join(parts)


def check_markdown(check: type[Check], *, heading: str = "##") -> str:
    """One check's section: title, what it reads, why (rationale), fix, examples."""
    parts = [
        f"{heading} {check.code}\n\n**{check.title}** — severity `{check.severity}`, {_reads(check)}.\n\n",
        inspect.cleandoc(check.rationale) + "\n\n",
        "**Fix.** " + inspect.cleandoc(check.fix) + "\n",
    ]
    examples = _examples(check)
    if examples:
        parts.append(f"\n**Examples.** {examples}\n")
    return "".join(parts)


def check_text(check: type[Check], *, width: int = 88) -> str:
    """One check for a terminal (`llava-doctor explain`): the same content as its markdown section."""

    def wrap(text: str) -> str:
        return textwrap.fill(text, width=width, initial_indent="  ", subsequent_indent="  ")

    lines = [
        f"{check.code}: {check.title}",
        f"  severity: {check.severity}   artifact: {', '.join(check.kinds())}   "
        f"reads tensor data: {'yes (--deep)' if check.deep else 'no'}",
        "",
        "Why:",
        "\n\n".join(wrap(" ".join(p.split())) for p in inspect.cleandoc(check.rationale).split("\n\n")),
        "",
        "Fix:",
        wrap(_one_paragraph(check.fix)),
    ]
    examples = _examples(check)
    if examples:
        lines += ["", "Examples:", wrap(examples)]
    reference = reference_uri(check.code)
    if reference:
        lines += ["", f"Reference: {reference}"]
    return "\n".join(lines)


def render_markdown(checks: dict[str, type[Check]] | None = None) -> str:
    """The whole catalogue (docs/checks.md): the built-in checks unless `checks` is given."""
    checks = checks if checks is not None else {c: k for c, k in all_checks().items() if is_builtin(k)}
    parts = [HEADER]
    parts.extend(f"| [{c}](#{c.lower()}) | {k.severity} | {', '.join(k.kinds())} | {k.title} |\n" for c, k in checks.items())
    parts.extend("\n" + check_markdown(check) for check in checks.values())
    return "".join(parts)


def is_builtin(check: type[Check]) -> bool:
    return check.__module__.startswith("llava_doctor.checks.")


def reference_path() -> Path | None:
    """The documentation file this install carries, or None when it has none.

    A wheel ships docs/checks.md as ``llava_doctor/reference/checks.md``; an editable install or a
    source tree runs from the checkout itself, whose docs/checks.md is then the installed copy.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "reference" / REFERENCE_FILE, package.parent / "docs" / REFERENCE_FILE):
        if candidate.is_file():
            return candidate
    return None


def reference_uri(code: str | None = None) -> str | None:
    """`file://…/llava_doctor/reference/checks.md#ld201` for a built-in code; None for a third-party one."""
    path = reference_path()
    if path is None:
        return None
    if code is None:
        return path.resolve().as_uri()
    check = all_checks().get(code)
    if check is None or not is_builtin(check):
        return None
    return f"{path.resolve().as_uri()}#{code.lower()}"


def rule_help(check: type[Check]) -> dict[str, Any]:
    """SARIF `help`: the check's documentation as text and markdown."""
    return {"text": f"{_one_paragraph(check.rationale)} Fix: {_one_paragraph(check.fix)}",
            "markdown": check_markdown(check, heading="####")}


if __name__ == "__main__":
    print(render_markdown(), end="")
