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
    """Samples, dropped, crashed, drifted, unverified and supervised tokens for the run's set-up, then
    (when computed) the same counts for every set-up tried on the first samples, and the ones that fit."""
    cols = ("set-up", "samples", "dropped", "crashed", "drifted", "unverified", "supervised", "answer tokens")
    rows = [(f"{summary.get('template', '')} ({summary.get('recipe', '')})", summary.get("samples", 0),
             summary.get("dropped", 0), summary.get("crashed", 0), summary.get("drifted", 0),
             summary.get("unverified", 0), summary.get("supervised_tokens", 0), summary.get("answer_tokens", 0))]
    own = (summary.get("recipe"), None)
    for f in summary.get("template_fits") or ():
        if (f["recipe"], f.get("pad_token")) != own and not f.get("fits"):
            continue  # other recipes and pads: only the set-ups that fit
        pad = f" pad={f['pad_token']}" if f.get("pad_token") else ""
        rows.append((f"  {f['template']} ({f['recipe']}{pad}){' fits' if f.get('fits') else ''}", f["samples"],
                     f["dropped"], f["crashed"], f["drifted"], f.get("unverified", 0), "", ""))
    widths = [max(len(str(c)), *(len(str(r[k])) for r in rows)) for k, c in enumerate(cols)]
    lines = ["summary per set-up:", "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    notes = []
    if summary.get("malformed"):
        notes.append(f"{summary['malformed']} malformed conversation(s) (data problems) count for no template")
    if summary.get("not_audited"):
        notes.append(f"{summary['not_audited']} sample(s) too large to audit (see their findings)")
    if summary.get("derivation_disproved"):
        notes.append(f"round lengths: exact path ({summary['derivation_disproved']})")
    if "setups_that_fit" in summary:
        notes.append("set-ups that fit: " + ("; ".join(summary["setups_that_fit"]) or "none"))
    if summary.get("unverified_means"):
        notes.append(summary["unverified_means"])
    return "\n".join(lines + notes)
