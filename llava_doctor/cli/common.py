"""What every command shares: output options, settings merge, rendering, exit codes, one-line errors.

A reporting command is written as

    @click.command()
    ...its own arguments and options...
    @output_options
    @guarded
    def cmd(..., select, ignore, fail_on, fmt, exit_zero, output) -> int:
        settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, kinds=("Checkpoint",))
        report = ...
        return emit(report, settings, output=output, exit_zero=exit_zero)

and gets, with nothing more: validated --select/--ignore/--format (and pyproject values), the
"nothing to check" guard for the artifact kinds it names, --statistics, input errors shown by
every format with exit 2, quiet libraries, a quiet end when stdout is a closed pipe, and one
line on stderr with exit 2 instead of a traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from ..config import Settings, check_value, load_settings
from ..findings import InputError, Report, Severity, one_line
from ..progress import progress_allowed
from ..quiet import quiet_libraries

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
STATISTICS_FORMATS = ("text", "json")
_STATISTICS = "llava_doctor.statistics"  # click context meta key: --statistics reaches emit without a parameter

__all__ = [
    "EXIT_CLEAN", "EXIT_ERROR", "EXIT_FINDINGS", "emit", "guarded", "one_line", "output_options", "quiet_libraries",
    "resolve_settings", "show_progress", "warn",
]


def _split_codes(values: tuple[str, ...]) -> tuple[str, ...] | None:
    codes = tuple(c.strip().upper() for v in values for c in v.split(",") if c.strip())
    return codes or None


def _remember_statistics(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_STATISTICS] = value
    return value


def output_options(func: Callable) -> Callable:
    """--select/--ignore/--fail-on/--format/--statistics/--exit-zero/--output, shared by every reporting command.

    --statistics is not passed to the command: `emit` reads it from the click context.
    """
    options = [
        click.option("--select", multiple=True, metavar="CODES", help="Only these codes or prefixes (e.g. LD2,LD101). Default: ALL."),
        click.option("--ignore", multiple=True, metavar="CODES", help="Skip these codes or prefixes."),
        click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
                     help="Exit 1 when a finding at or above this severity exists. Default: error."),
        click.option("--format", "fmt", default=None, metavar="NAME",
                     help="Output format: text (default), json, junit, sarif, github, or a reporter registered "
                          "under the llava_doctor.reporters entry point."),
        click.option("--statistics", is_flag=True, expose_value=False, callback=_remember_statistics,
                     help="Print the number of findings per code instead of the findings (text or json)."),
        click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings exist (2 still means unreadable input)."),
        click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
                     help="Write the report to FILE instead of standard output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _statistics_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_STATISTICS))


def resolve_settings(*, select=(), ignore=(), fail_on=None, fmt=None, kinds: Iterable[str] = (), **extra: Any) -> Settings:
    """pyproject settings under the command line, every value checked (unknown ones are usage errors).

    `kinds` are the artifact kinds the command will check; a selection that leaves none of them a
    check is a usage error ("nothing to check"), one that leaves some of them none is a warning.
    """
    from ..registry import check_patterns

    cli_select, cli_ignore = _split_codes(select), _split_codes(ignore)
    settings = load_settings(Path.cwd()).merged(
        select=check_patterns(cli_select, where="--select") if cli_select else None,
        ignore=check_patterns(cli_ignore, where="--ignore") if cli_ignore else None,
        fail_on=Severity.parse(fail_on) if fail_on else None,
        format=check_value("format", fmt, where="--format") if fmt is not None else None,
        **extra,
    )
    if _statistics_requested() and settings.format not in STATISTICS_FORMATS:
        raise InputError(f"--statistics prints {' or '.join(STATISTICS_FORMATS)}, not --format {settings.format}")
    check_coverage(settings, tuple(kinds))
    return settings


def check_coverage(settings: Settings, kinds: tuple[str, ...]) -> None:
    """Refuse a selection that checks nothing; warn about kinds it leaves unchecked and about named
    checks that need --deep (ruff refuses unknown codes; here a known code can still run nothing)."""
    from ..registry import all_checks, selection_gaps

    if not kinds:
        return
    gaps = selection_gaps(kinds, select=settings.select, ignore=settings.ignore, deep=settings.deep)
    described = "; ".join(f"{kind}: {why}" for kind, why in gaps.items())
    if len(gaps) == len(set(kinds)):
        raise InputError(f"nothing to check: the selection (select {','.join(settings.select)}"
                         f"{'; ignore ' + ','.join(settings.ignore) if settings.ignore else ''}) leaves no check for "
                         f"{described}")
    for kind, why in gaps.items():
        warn(f"{kind} inputs are not checked: the selection leaves no check for them ({why})")
    checks = all_checks()
    needs_deep = [code for code in settings.select if code in checks and checks[code].deep and not settings.deep
                  and set(checks[code].kinds()) & set(kinds) and set(checks[code].kinds()) - set(gaps)]
    if needs_deep:
        warn(f"{', '.join(needs_deep)} not run: {'it reads' if len(needs_deep) == 1 else 'they read'} tensor data (add --deep)")


def warn(message: str) -> None:
    """One line on stderr that the user must see (a gap in what was checked), whatever the format."""
    try:
        click.echo(f"llava-doctor: warning: {one_line(message)}", err=True)
    except BrokenPipeError:
        pass


def show_progress(settings: Settings) -> bool:
    """Whether this run may draw progress bars (text output, stderr a terminal, no NO_COLOR/CI/TQDM_DISABLE)."""
    return progress_allowed(settings.format)


def render(report: Report, settings: Settings, *, color: bool = False) -> str:
    from ..registry import all_checks
    from ..reporters import get_reporter
    from ..reporters.json import render_statistics_json
    from ..reporters.text import render_statistics_text

    rules = all_checks()
    if _statistics_requested():
        statistics = render_statistics_json if settings.format == "json" else render_statistics_text
        return statistics(report, rules=rules)
    return get_reporter(settings.format).render(report, color=color, rules=rules)


def emit(report: Report, settings: Settings, *, output: str | None, exit_zero: bool, prologue: str = "",
         epilogue: str = "") -> int:
    """Render and write the report (`prologue` / `epilogue`: a command's own lines before / after it, text format
    only); return the exit code: 2 when an input could not be read (even with --exit-zero, which only means
    findings do not fail), else 1 for findings at or above fail-on."""
    to_tty = output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    text = render(report, settings, color=to_tty and settings.format == "text")
    if settings.format == "text":
        text = "\n".join(part for part in (prologue, text, epilogue) if part)
    if output:
        try:
            Path(output).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write report to {output}: {exc.strerror or exc}") from None
    elif text:
        try:
            click.echo(text)
        except BrokenPipeError:
            stdout_gone()
    if report.input_errors:
        if output or settings.format != "text":  # a person reading the terminal or CI log sees why it is 2
            for line in report.input_error_lines():
                _error(line)
        return EXIT_ERROR
    return EXIT_CLEAN if exit_zero else report.exit_code(settings.fail_on)


def stdout_gone() -> None:
    """The reader of our stdout went away (`| head`): send the rest of the output, and Python's final
    flush, to /dev/null so that the run ends without a BrokenPipeError traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's buffer)
        pass


def guarded(func: Callable[..., int]) -> Callable[..., None]:
    """Run a command body with the libraries quiet; InputError and any unexpected error become one line on
    stderr and exit 2; a closed stdout pipe ends the run quietly (exit 1 unless the report was written).

    Set LLAVA_DOCTOR_DEBUG=1 to see the traceback of an unexpected error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            with quiet_libraries():
                code = func(*args, **kwargs)
        except InputError as exc:
            _error(one_line(exc))
            sys.exit(EXIT_ERROR)
        except BrokenPipeError:
            stdout_gone()
            sys.exit(EXIT_FINDINGS)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _error("interrupted")
            sys.exit(130)
        except Exception as exc:  # the promise: never a traceback
            if os.environ.get("LLAVA_DOCTOR_DEBUG"):
                raise
            _error(f"{type(exc).__name__}: {one_line(exc)} (set LLAVA_DOCTOR_DEBUG=1 for details)")
            sys.exit(EXIT_ERROR)
        sys.exit(code or EXIT_CLEAN)

    return wrapper


def _error(message: str) -> None:
    try:
        click.echo(f"llava-doctor: error: {message}", err=True)
    except BrokenPipeError:
        pass
