"""Check discovery and the `Check` unit.

A check is a small class that carries its own code, title, rationale, fix hint, the kind of
artifact it consumes and its own valid/invalid examples (the way Fixit's ``LintRule`` does).
Built-in checks live in ``llava_doctor.checks`` (the top-level ``checks/`` folder, shipped inside
the package); third-party checks are found through the ``llava_doctor.checks`` entry-point group,
the way flake8 finds plugins. Importing this module and the built-in checks must stay cheap: no
torch, no transformers at import time.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping

from .findings import Finding, Severity, unknown_value

ENTRY_POINT_GROUP = "llava_doctor.checks"
CODE_PATTERN = re.compile(r"^[A-Z]{2,5}\d{3}$")
BUILTIN_PREFIX = "LD"

# Artifact kinds a check may consume (see DESIGN.md §2). Names, not classes, so that declaring a
# check never imports the (possibly heavy) artifact module. "Launch" is a training launch command
# read by `preflight`.
ARTIFACT_KINDS = ("Checkpoint", "Dataset", "LiveModel", "TrainingLog", "Generation", "Launch")


def handler_name(kind: str) -> str:
    """`LiveModel` -> `run_live_model`: the method a multi-kind check implements for that kind."""
    return "run_" + re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


@dataclass(frozen=True)
class Context:
    """What a run knows beyond the artifact: user options and optional companions."""

    deep: bool = False
    stage: str | None = None
    base: Any = None  # a second artifact of the same kind to compare against (e.g. --base CKPT)
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@dataclass(frozen=True)
class Example:
    """A self-contained example for a check: `build()` returns the artifact (and optionally a Context).

    For an invalid example, `count` (if set) is the exact number of findings of the check's code
    and every string of `contains` must appear in some finding message.
    """

    name: str
    build: Callable[[], Any]
    context: Callable[[], Context] | None = None
    count: int | None = None
    contains: tuple[str, ...] = ()


class Check:
    """One check. `artifact` names the kind it consumes, or a tuple of kinds when one question is
    asked of several (LD201 of a checkpoint file and of a live model): such a check implements
    ``run_<kind>`` per kind (``run_checkpoint``, ``run_live_model``, ...) - two thin adapters over
    one pure function - and the default ``run`` dispatches on the artifact's ``kind``."""

    code: ClassVar[str] = ""
    title: ClassVar[str] = ""
    artifact: ClassVar[str | tuple[str, ...]] = ""
    severity: ClassVar[Severity] = Severity.ERROR
    rationale: ClassVar[str] = ""
    fix: ClassVar[str] = ""
    deep: ClassVar[bool] = False  # reads tensor data: runs only with --deep
    valid: ClassVar[tuple[Example, ...]] = ()
    invalid: ClassVar[tuple[Example, ...]] = ()

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        return (cls.artifact,) if isinstance(cls.artifact, str) else tuple(cls.artifact)

    def run(self, artifact: Any, context: Context) -> Iterable[Finding]:
        kind = getattr(artifact, "kind", None)
        if kind is None and len(self.kinds()) == 1:
            kind = self.kinds()[0]
        handler = getattr(self, handler_name(kind), None) if isinstance(kind, str) else None
        if handler is None:
            raise TypeError(f"{self.code} cannot run on {type(artifact).__name__} (kind {kind!r}); it reads {', '.join(self.kinds())}")
        return handler(artifact, context)

    def finding(
        self,
        message: str,
        *,
        artifact: str,
        location: str = "",
        observed: Any = None,
        expected: Any = None,
        severity: Severity | None = None,
        fix: str | None = None,
        **extra: Any,
    ) -> Finding:
        return Finding(
            code=self.code,
            severity=self.severity if severity is None else severity,
            message=message,
            artifact=artifact,
            location=location,
            fix=" ".join((self.fix if fix is None else fix).split()),
            observed=observed,
            expected=expected,
            extra=extra,
        )

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "code": cls.code,
            "title": cls.title,
            "artifact": ", ".join(cls.kinds()),
            "severity": str(cls.severity),
            "deep": cls.deep,
            "rationale": inspect.cleandoc(cls.rationale),
            "fix": inspect.cleandoc(cls.fix),
        }


class RegistryError(Exception):
    pass


def validate(check: type[Check], *, builtin: bool) -> None:
    name = f"{check.__module__}.{check.__qualname__}"
    if not CODE_PATTERN.match(check.code or ""):
        raise RegistryError(f"{name}: code {check.code!r} is not like LD123")
    if not builtin and check.code.startswith(BUILTIN_PREFIX):
        raise RegistryError(f"{name}: the {BUILTIN_PREFIX} prefix is reserved for built-in checks")
    kinds = check.kinds()
    if not kinds or any(kind not in ARTIFACT_KINDS for kind in kinds):
        raise RegistryError(f"{name}: artifact {check.artifact!r} is not one of {', '.join(ARTIFACT_KINDS)}")
    for attr in ("title", "rationale", "fix"):
        if not getattr(check, attr).strip():
            raise RegistryError(f"{name}: {attr} is empty")
    if check.run is Check.run:
        missing = [k for k in kinds if not callable(getattr(check, handler_name(k), None))]
        if missing:
            raise RegistryError(f"{name}: implements neither run() nor {', '.join(handler_name(k) for k in missing)}()")


def _checks_in_module(module: Any) -> Iterator[type[Check]]:
    for value in vars(module).values():
        if (
            inspect.isclass(value)
            and issubclass(value, Check)
            and value is not Check
            and value.__module__ == module.__name__
            and value.code
        ):
            yield value


def builtin_checks() -> list[type[Check]]:
    package = importlib.import_module("llava_doctor.checks")
    found: list[type[Check]] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.extend(_checks_in_module(module))
    return found


def plugin_checks() -> list[type[Check]]:
    found: list[type[Check]] = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the tool down
            raise RegistryError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if inspect.ismodule(obj):
            found.extend(_checks_in_module(obj))
        elif inspect.isclass(obj) and issubclass(obj, Check):
            found.append(obj)
        else:
            raise RegistryError(f"plugin {ep.name!r} ({ep.value}) is neither a Check subclass nor a module")
    return found


_CACHE: dict[str, type[Check]] | None = None


def all_checks(*, refresh: bool = False) -> dict[str, type[Check]]:
    """Every known check by code, built-ins first, validated; duplicate codes are an error."""
    global _CACHE
    if _CACHE is not None and not refresh:
        return _CACHE
    table: dict[str, type[Check]] = {}
    for builtin, checks in ((True, builtin_checks()), (False, plugin_checks())):
        for check in checks:
            validate(check, builtin=builtin)
            if check.code in table and table[check.code] is not check:
                raise RegistryError(
                    f"code {check.code} is claimed by both {table[check.code].__module__} and {check.__module__}"
                )
            table[check.code] = check
    _CACHE = dict(sorted(table.items()))
    return _CACHE


def matches(code: str, patterns: Iterable[str]) -> bool:
    """`LD2` matches LD201..LD299, `LD201` only itself, `ALL` everything (ruff-style prefixes)."""
    return any(p == "ALL" or code.startswith(p) for p in patterns)


def code_ranges(codes: Iterable[str]) -> str:
    """`LD101, LD102, LD103, LD201` -> `LD101-LD103, LD201`: a compact list of codes for one-line messages."""
    runs: list[list[str]] = []
    for code in sorted(codes):
        if runs and code[:-3] == runs[-1][-1][:-3] and int(code[-3:]) == int(runs[-1][-1][-3:]) + 1:
            runs[-1].append(code)
        else:
            runs.append([code])
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def check_patterns(patterns: Iterable[str], *, where: str = "") -> tuple[str, ...]:
    """Normalise codes/prefixes and refuse any that names no known check: a typo in --select or --ignore
    would otherwise silently run nothing (or skip nothing). `ALL` and third-party codes are known."""
    codes = list(all_checks())
    normalised = tuple(str(p).strip().upper() for p in patterns if str(p).strip())
    for pattern in normalised:
        if pattern != "ALL" and not any(code.startswith(pattern) for code in codes):
            raise unknown_value("code or prefix", pattern, codes, where=where,
                                listed=f"ALL, {code_ranges(codes)} (`llava-doctor rules` lists them)")
    return normalised


def expand_severity_overrides(overrides: Mapping[str, Severity], *, where: str = "") -> dict[str, Severity]:
    """{code or prefix: severity} -> {code: severity}; the most specific pattern wins (`LD2` then `LD205`)."""
    by_pattern = {check_patterns([key], where=where)[0]: Severity.parse(value) for key, value in overrides.items()}
    expanded: dict[str, Severity] = {}
    for pattern in sorted(by_pattern, key=lambda p: (p != "ALL", len(p))):
        for code in all_checks():
            if matches(code, [pattern]):
                expanded[code] = by_pattern[pattern]
    return expanded


def selected_codes(
    artifact: str, *, select: Iterable[str] = ("ALL",), ignore: Iterable[str] = (), deep: bool = False
) -> list[str]:
    """The codes that will run on an artifact kind under this selection (validated: unknown codes raise)."""
    select = check_patterns(select, where="select") or ("ALL",)
    ignore = check_patterns(ignore, where="ignore")
    return [
        code for code, check in all_checks().items()
        if artifact in check.kinds() and (deep or not check.deep) and matches(code, select) and not matches(code, ignore)
    ]


def selection_gaps(
    kinds: Iterable[str], *, select: Iterable[str] = ("ALL",), ignore: Iterable[str] = (), deep: bool = False
) -> dict[str, str]:
    """Artifact kind -> why the selection leaves no check for it (kinds it covers are absent)."""
    select = check_patterns(select, where="select") or ("ALL",)
    ignore = check_patterns(ignore, where="ignore")
    gaps = {}
    for kind in kinds:
        if selected_codes(kind, select=select, ignore=ignore, deep=deep):
            continue
        of_kind = [code for code, check in all_checks().items() if kind in check.kinds()]
        wanted = [code for code in of_kind if matches(code, select) and not matches(code, ignore)]
        if wanted:  # selected, but every one of them reads tensor data
            gaps[kind] = f"{code_ranges(wanted)} read tensor data: add --deep"
        elif of_kind:
            gaps[kind] = f"its checks are {code_ranges(of_kind)}"
        else:
            gaps[kind] = "no installed check reads it"
    return gaps


def select_checks(
    artifact: str,
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    deep: bool = False,
) -> list[Check]:
    checks = all_checks()
    return [checks[code]() for code in selected_codes(artifact, select=select, ignore=ignore, deep=deep)]


def run_checks(artifact_obj: Any, kind: str, context: Context, **selection: Any) -> list[Finding]:
    findings: list[Finding] = []
    for check in select_checks(kind, deep=context.deep, **selection):
        handler = getattr(check, handler_name(kind), None) if type(check).run is Check.run else None
        findings.extend((handler or check.run)(artifact_obj, context))
    return findings
