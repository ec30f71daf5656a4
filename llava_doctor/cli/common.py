"""What every command shares: output options, settings merge, rendering, exit codes, one-line errors."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..config import Settings, load_settings
from ..findings import InputError, Report, Severity

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
from ..config import FORMATS


def _split_codes(values: tuple[str, ...]) -> tuple[str, ...] | None:
    codes = tuple(c.strip().upper() for v in values for c in v.split(",") if c.strip())
    return codes or None


def output_options(func: Callable) -> Callable:
    """--select/--ignore/--fail-on/--format/--exit-zero/--output, shared by every reporting command."""
    options = [
        click.option("--select", multiple=True, metavar="CODES", help="Only these codes or prefixes (e.g. LD2,LD101). Default: ALL."),
        click.option("--ignore", multiple=True, metavar="CODES", help="Skip these codes or prefixes."),
        click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
                     help="Exit 1 when a finding at or above this severity exists. Default: error."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format. Default: text."),
        click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings exist (2 still means unreadable input)."),
        click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Write the report to FILE instead of standard output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_settings(*, select=(), ignore=(), fail_on=None, fmt=None, **extra: Any) -> Settings:
    settings = load_settings(Path.cwd())
    return settings.merged(
        select=_split_codes(select),
        ignore=_split_codes(ignore),
        fail_on=Severity.parse(fail_on) if fail_on else None,
        format=fmt,
        **extra,
    )


def emit(report: Report, settings: Settings, *, output: str | None, exit_zero: bool) -> int:
    from ..registry import all_checks
    from ..reporters import get_reporter

    reporter = get_reporter(settings.format)
    to_tty = output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    text = reporter.render(report, color=to_tty and settings.format == "text", rules=all_checks())
    if output:
        try:
            Path(output).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write report to {output}: {exc.strerror or exc}") from None
    elif text:
        click.echo(text)
    return EXIT_CLEAN if exit_zero else report.exit_code(settings.fail_on)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def guarded(func: Callable[..., int]) -> Callable[..., None]:
    """Run a command body; InputError and any unexpected error become one line on stderr and exit 2.

    Set LLAVA_DOCTOR_DEBUG=1 to see the traceback of an unexpected error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"llava-doctor: error: {one_line(exc)}", err=True)
            sys.exit(EXIT_ERROR)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("llava-doctor: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the promise: never a traceback
            if os.environ.get("LLAVA_DOCTOR_DEBUG"):
                raise
            click.echo(
                f"llava-doctor: error: {type(exc).__name__}: {one_line(exc)} (set LLAVA_DOCTOR_DEBUG=1 for details)",
                err=True,
            )
            sys.exit(EXIT_ERROR)
        sys.exit(code or EXIT_CLEAN)

    return wrapper
