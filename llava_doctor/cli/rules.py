"""`llava-doctor rules` and `llava-doctor explain CODE`."""
from __future__ import annotations

import json
import textwrap

import click

from ..findings import InputError, doc_anchor
from .common import guarded


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@guarded
def rules(fmt) -> int:
    """List every check: code, severity, artifact and title."""
    from ..registry import all_checks

    checks = all_checks()
    if fmt == "json":
        click.echo(json.dumps([c.describe() for c in checks.values()], indent=2))
    else:
        for code, check in checks.items():
            deep = " (--deep)" if check.deep else ""
            click.echo(f"{code}  {str(check.severity):7}  {check.artifact:11}  {check.title}{deep}")
    return 0


@click.command()
@click.argument("code")
@guarded
def explain(code) -> int:
    """Explain one check: why it exists, what it looks at, how to fix what it finds."""
    from ..registry import all_checks

    checks = all_checks()
    check = checks.get(code.strip().upper())
    if check is None:
        raise InputError(f"unknown check {code!r}; `llava-doctor rules` lists them")
    d = check.describe()
    wrap = lambda text: textwrap.fill(" ".join(text.split()), width=88, initial_indent="  ", subsequent_indent="  ")
    click.echo(f"{d['code']}: {d['title']}")
    click.echo(f"  severity: {d['severity']}   artifact: {d['artifact']}   reads tensor data: {'yes (--deep)' if d['deep'] else 'no'}")
    click.echo("\nWhy:\n" + wrap(d["rationale"]))
    click.echo("\nFix:\n" + wrap(d["fix"]))
    if check.invalid or check.valid:
        click.echo("\nExamples: fires on " + ", ".join(e.name for e in check.invalid) +
                   ("; silent on " + ", ".join(e.name for e in check.valid) if check.valid else ""))
    click.echo(f"\nDocs: {doc_anchor(d['code'])}")
    return 0
