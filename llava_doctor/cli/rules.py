"""`llava-doctor rules` and `llava-doctor explain CODE`."""
from __future__ import annotations

import json

import click

from .common import guarded


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@guarded
def rules(fmt) -> int:
    """List every check: code, severity, artifact and title (third-party checks included)."""
    from ..registry import all_checks

    checks = all_checks()
    if fmt == "json":
        click.echo(json.dumps([c.describe() for c in checks.values()], indent=2))
    else:
        for code, check in checks.items():
            deep = " (--deep)" if check.deep else ""
            click.echo(f"{code}  {str(check.severity):7}  {', '.join(check.kinds()):11}  {check.title}{deep}")
    return 0


@click.command()
@click.argument("code")
@guarded
def explain(code) -> int:
    """Explain one check: why it exists, what it reads, how to fix what it finds, its examples."""
    from ..docs import check_text
    from ..findings import InputError
    from ..registry import all_checks, check_patterns, code_ranges

    checks = all_checks()
    wanted = code.strip().upper()
    if wanted not in checks:
        check_patterns([wanted], where="explain")  # unknown: the closest code and the known ones
        raise InputError(f"explain: {wanted!r} is a prefix of {code_ranges(c for c in checks if c.startswith(wanted))}; "
                         "give one code")
    click.echo(check_text(checks[wanted]))
    return 0
