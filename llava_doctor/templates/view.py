"""Token/label view of a sample (axolotl-style): trained, masked and image tokens told apart.

On a terminal the three kinds get distinct colours (green trained, red masked, blue image);
otherwise each token is printed with a plain marker: ``+`` trained, ``-`` masked, ``@`` image,
followed by ``(label, input_id)``.
"""
from __future__ import annotations

from typing import Any

import click

from .analysis import SampleAnalysis
from .tokenize import IGNORE_INDEX, IMAGE_TOKEN_INDEX

MARKERS = {"trained": "+", "masked": "-", "image": "@"}
COLOURS = {"trained": "green", "masked": "red", "image": "blue"}


def _piece(tokenizer: Any, token: int) -> str:
    if token == IMAGE_TOKEN_INDEX:
        return "<image>"
    text = tokenizer.convert_ids_to_tokens(int(token))
    return repr(text)[1:-1] if isinstance(text, str) else str(token)


def token_view(analysis: SampleAnalysis, tokenizer: Any, *, color: bool, width: int = 100) -> str:
    r = analysis.result
    head = f"sample {analysis.sample.id} ({r.template}, {r.function or 'preprocess'})"
    if r.warning:
        head += f": {r.warning}"
    if r.crash:
        return f"{head}: raises {r.crash}"
    oracle_labels = analysis.oracle.labels if analysis.oracle else []
    lines, line = [head], ""
    for k, (token, label) in enumerate(zip(r.input_ids, r.labels)):
        kind = "image" if token == IMAGE_TOKEN_INDEX else ("masked" if label == IGNORE_INDEX else "trained")
        should = k < len(oracle_labels) and oracle_labels[k] != IGNORE_INDEX
        wrong = kind != "image" and should != (kind == "trained") and not r.mismatch
        cell = f"{_piece(tokenizer, token)}({label},{token})" + ("!" if wrong else "")
        cell = click.style(cell, fg=COLOURS[kind], bold=wrong) if color else MARKERS[kind] + cell
        if line and len(click.unstyle(line)) + len(click.unstyle(cell)) > width:
            lines.append(line)
            line = ""
        line += cell + " "
    if line:
        lines.append(line.rstrip())
    legend = "legend: " + ", ".join(
        (click.style(k, fg=COLOURS[k]) if color else f"{MARKERS[k]} {k}") for k in MARKERS
    ) + "; ! = differs from the answer spans (oracle)"
    lines.append(legend)
    return "\n".join(lines)


def summary_table(summary: dict) -> str:
    """Samples, dropped, crashed, drifted and supervised tokens for the run's template, then (when
    computed) the same counts for every template tried on the first samples."""
    cols = ("template", "samples", "dropped", "crashed", "drifted", "supervised", "answer tokens")
    rows = [(f"{summary.get('template', '')} ({summary.get('recipe', '')})", summary.get("samples", 0),
             summary.get("dropped", 0), summary.get("crashed", 0), summary.get("drifted", 0),
             summary.get("supervised_tokens", 0), summary.get("answer_tokens", 0))]
    for name, f in sorted((summary.get("template_fits") or {}).items()):
        rows.append((f"  {name}", f["samples"], f["dropped"], f["crashed"], f["drifted"], "", ""))
    widths = [max(len(str(c)), *(len(str(r[k])) for r in rows)) for k, c in enumerate(cols)]
    lines = ["summary per template:", "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    if "templates_that_fit" in summary:
        lines.append("templates that fit: " + (", ".join(summary["templates_that_fit"]) or "none"))
    return "\n".join(lines)
