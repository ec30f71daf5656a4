"""Read a bash launch script the way bash would expand it, without running a line of it.

A launch script is text: statements split on newlines, ``;``, ``&&``, ``||``, ``|`` and ``&`` (outside
quotes), with ``\\``-newline continuations and ``#`` comments. Variable assignments (``NAME=value``,
``export NAME=value``, ``declare``/``local``/``readonly``) are recorded in order, and every other
statement is expanded - ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME//pattern/repl}``,
``${NAME#pattern}``, ``${#NAME}``, ``${NAME^^}``, ``${NAME:offset:length}`` - against those
assignments over the caller's environment, then split into words by :func:`shlex.split`.

What cannot be known without running something is never guessed: a command substitution
(``$(...)``, backticks), arithmetic on unknown values, a positional parameter (``$1``) or an
unset variable expands to what bash would give for an unknown value (the empty string) and is
listed in :attr:`Statement.unresolved`, so the report can say which words it could not read.
Nothing here opens a file, runs a process or sources another script.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Mapping

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=(.*)$", re.S)
DECLARERS = ("export", "declare", "typeset", "local", "readonly")
# words that open or close a compound command; the simple command after them is still read
RESERVED = frozenset({"then", "do", "else", "{", "!", "time"})
SKIPPED = frozenset({"if", "elif", "while", "until", "for", "case", "select", "function", "fi", "done", "esac", "}",
                     "[[", "[", "((", "test", "return", "exit"})


class ShellSyntaxError(ValueError):
    """The script cannot be split into words (an unclosed quote or substitution)."""


@dataclass(frozen=True)
class Statement:
    """One simple command after expansion: its words, the assignments before it, where it starts."""

    words: tuple[str, ...]
    line: int
    prefix: Mapping[str, str] = field(default_factory=dict)  # NAME=value words before the command
    unresolved: tuple[str, ...] = ()  # what could not be expanded: "$(...)", "NUM_GPUS (unset)", "$1"
    variables: Mapping[str, str] = field(default_factory=dict)  # the script's own assignments at this point


# ---------------------------------------------------------------------------------------------
# splitting into statements


def _skip_to_close(text: str, i: int, opener: str, closer: str) -> int:
    """Index just past the `closer` matching the `opener` at text[i - 1] (quotes and nesting respected)."""
    depth, quote = 1, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif c == opener:
            depth += 1
        elif c == closer:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellSyntaxError(f"unclosed {opener!r}")


def split_statements(text: str) -> list[tuple[int, str]]:
    """(first line, raw text) of each statement, continuations joined and comments dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    line, start_line, quote, started = 1, 1, None, False
    i, n = 0, len(text)

    def flush() -> None:
        nonlocal started
        raw = "".join(buf).strip()
        if raw:
            out.append((start_line, raw))
        buf.clear()
        started = False

    while i < n:
        c = text[i]
        if not started and not c.isspace():
            started, start_line = True, line
        if quote == "'" or (quote == '"' and c not in "\\`" and not text.startswith(("$(", "${"), i)):
            buf.append(c)  # inside quotes: literal; the closing quote ends them
            line += c == "\n"
            if c == quote:
                quote = None
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":  # a continuation: bash removes both characters (also inside "...")
                line += 1
                i += 2
                continue
            buf.append(text[i:i + 2])
            i += 2
            continue
        if c == "$" and i + 1 < n and text[i + 1] in "({":
            opener = text[i + 1]
            end = _skip_to_close(text, i + 2, opener, ")" if opener == "(" else "}")
            piece = text[i:end]
            line += piece.count("\n")
            buf.append(piece.replace("\\\n", ""))
            i = end
            continue
        if c == "`":
            end = text.find("`", i + 1)
            while end != -1 and text[end - 1] == "\\":
                end = text.find("`", end + 1)
            if end == -1:
                raise ShellSyntaxError(f"line {line}: unclosed backquote")
            piece = text[i:end + 1]
            line += piece.count("\n")
            buf.append(piece)
            i = end + 1
            continue
        if c in "'\"" and quote is None:
            quote = c
            buf.append(c)
            i += 1
            continue
        if c == "#" and (not buf or buf[-1][-1:] in (" ", "\t", "\n", ";", "&", "|", "(", ")")):
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in "\n;&|":
            flush()
            line += c == "\n"
            i += 2 if text[i:i + 2] in ("&&", "||", ";;") else 1
            continue
        buf.append(c)
        i += 1
    if quote:
        raise ShellSyntaxError(f"line {start_line}: unclosed {quote} quote")
    flush()
    return out


# ---------------------------------------------------------------------------------------------
# expansion


def _escape(value: str, quoted: bool) -> str:
    """`value` written so that shlex reads it back literally (inside "..." when `quoted`)."""
    if quoted:
        return re.sub(r'(["\\$`])', r"\\\1", value)
    return re.sub(r"([\"'\\])", r"\\\1", value)  # whitespace stays: unquoted expansions are field-split


def _strip_quotes(word: str) -> str:
    try:
        parts = shlex.split(word)
    except ValueError:
        return word
    return " ".join(parts) if parts else ""


def _glob_prefix(value: str, pattern: str, longest: bool, suffix: bool) -> str:
    lengths = range(len(value), -1, -1) if longest else range(0, len(value) + 1)
    for k in lengths:
        piece = value[len(value) - k:] if suffix else value[:k]
        if fnmatch.fnmatchcase(piece, pattern):
            return value[:len(value) - k] if suffix else value[k:]
    return value


def _replace(value: str, pattern: str, replacement: str, every: bool) -> str:
    literal = pattern.replace("\\", "") if not re.search(r"(?<!\\)[*?\[]", pattern) else None
    if literal is not None:
        if not literal:
            return value
        return value.replace(literal, replacement) if every else value.replace(literal, replacement, 1)
    regex = fnmatch.translate(pattern)[4:-3]  # drop (?s: ... )\Z
    return re.sub(regex, lambda _m: replacement, value, count=0 if every else 1)


class _Expander:
    def __init__(self, variables: dict[str, str], environ: Mapping[str, str], tainted: Mapping[str, str]):
        self.variables = variables
        self.environ = environ
        self.tainted = tainted  # variables whose own assignment held something unresolved
        self.unresolved: list[str] = []

    def lookup(self, name: str) -> str | None:
        if name in self.tainted:
            self.note(f"{name} (set from {self.tainted[name]})")
        if name in self.variables:
            return self.variables[name]
        return self.environ.get(name)

    def note(self, what: str) -> None:
        if what not in self.unresolved:
            self.unresolved.append(what)

    def value_of_word(self, word: str) -> str:
        """A `${NAME:-word}` word: expanded, quotes removed (as bash does for the operand)."""
        return _strip_quotes(self.expand(word))

    def parameter(self, body: str) -> str:
        """The value of ${body}."""
        if body.startswith("#") and NAME.fullmatch(body[1:]):
            value = self.lookup(body[1:])
            if value is None:
                self.note(f"{body[1:]} (unset)")
            return str(len(value or ""))
        match = NAME.match(body) or re.match(r"[0-9@*#?$!]", body)
        if not match:
            self.note("${" + body + "}")
            return ""
        name, rest = match.group(0), body[match.end():]
        if not NAME.fullmatch(name):
            self.note(f"${name}")
            return ""
        value = self.lookup(name)
        if not rest:
            if value is None:
                self.note(f"{name} (unset)")
            return value or ""
        for op in (":-", ":=", ":+", ":?", "-", "=", "+", "?"):
            if rest.startswith(op):
                word = rest[len(op):]
                empty = value is None or (op.startswith(":") and value == "")
                if op.endswith("-"):
                    return self.value_of_word(word) if empty else value
                if op.endswith("="):
                    if empty:
                        value = self.value_of_word(word)
                        self.variables[name] = value
                    return value
                if op.endswith("+"):
                    return "" if empty else self.value_of_word(word)
                if empty:
                    self.note(f"{name} (unset)")
                return value or ""
        if value is None:
            self.note(f"{name} (unset)")
            value = ""
        if rest.startswith("//") or rest.startswith("/"):
            every = rest.startswith("//")
            spec = rest[2 if every else 1:]
            parts = re.split(r"(?<!\\)/", spec, maxsplit=1)
            pattern, replacement = parts[0], (self.value_of_word(parts[1]) if len(parts) > 1 else "")
            return _replace(value, pattern, replacement, every)
        for op, longest, suffix in (("##", True, False), ("#", False, False), ("%%", True, True), ("%", False, True)):
            if rest.startswith(op):
                return _glob_prefix(value, self.value_of_word(rest[len(op):]), longest, suffix)
        if rest in ("^^", ",,", "^", ","):
            if rest == "^^":
                return value.upper()
            if rest == ",,":
                return value.lower()
            return (value[:1].upper() if rest == "^" else value[:1].lower()) + value[1:]
        sub = re.fullmatch(r":\s*(-?\d+)(?::\s*(-?\d+))?", rest)
        if sub:
            start = int(sub.group(1))
            start = max(0, len(value) + start) if start < 0 else start
            if sub.group(2) is None:
                return value[start:]
            length = int(sub.group(2))
            return value[start:start + length] if length >= 0 else value[start:len(value) + length]
        self.note("${" + body + "}")
        return ""

    def arithmetic(self, expr: str) -> str:
        text = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?|\b([A-Za-z_][A-Za-z0-9_]*)\b",
                      lambda m: self.lookup(m.group(1) or m.group(2)) or "x", expr)
        if re.fullmatch(r"[\d\s+\-*/%()]+", text):
            try:
                return str(int(eval(text.replace("/", "//"), {"__builtins__": {}}, {})))  # digits and operators only
            except (SyntaxError, ZeroDivisionError, ValueError):
                pass
        self.note(f"$(({expr}))")
        return ""

    def expand(self, raw: str) -> str:
        """`raw` with every expansion replaced by its value, escaped so that shlex keeps it literal."""
        out: list[str] = []
        quote = None
        word_start = True
        word_from = 0  # index in `out` where the current word began
        i, n = 0, len(raw)
        while i < n:
            c = raw[i]
            if quote == "'":
                out.append(c)
                quote = None if c == "'" else quote
                i += 1
                continue
            if c == "\\" and i + 1 < n:
                out.append(raw[i:i + 2])
                i += 2
                word_start = False
                continue
            if c == "$" and i + 1 < n:
                current = "".join(out[word_from:]) if not word_start else ""
                in_assignment = bool(ASSIGNMENT.match(current))  # NAME=$X: no field splitting
                quoted = quote == '"' or in_assignment
                nxt = raw[i + 1]
                if raw.startswith("$((", i):
                    end = raw.find("))", i + 3)
                    if end == -1:
                        raise ShellSyntaxError("unclosed $((")
                    out.append(_escape(self.arithmetic(raw[i + 3:end]), quoted))
                    i = end + 2
                elif nxt == "(":
                    end = _skip_to_close(raw, i + 2, "(", ")")
                    self.note(raw[i:end] if end - i <= 60 else raw[i:i + 57] + "...)")
                    i = end
                elif nxt == "{":
                    end = _skip_to_close(raw, i + 2, "{", "}")
                    out.append(_escape(self.parameter(raw[i + 2:end - 1]), quoted))
                    i = end
                elif NAME.match(raw, i + 1):
                    match = NAME.match(raw, i + 1)
                    name = match.group(0)
                    value = self.lookup(name)
                    if value is None:
                        self.note(f"{name} (unset)")
                    out.append(_escape(value or "", quoted))
                    i = match.end()
                elif nxt in "0123456789@*#?$!-":
                    self.note(f"${nxt}")
                    i += 2
                else:
                    out.append("\\$")
                    i += 1
                word_start = False
                continue
            if c == "`" and quote != "'":
                end = raw.find("`", i + 1)
                end = n - 1 if end == -1 else end
                self.note(raw[i:end + 1])
                i = end + 1
                continue
            if c == "~" and word_start and quote is None and (i + 1 == n or raw[i + 1] in "/ \t"):
                out.append(_escape(os.path.expanduser("~"), False))
                i += 1
                word_start = False
                continue
            if c == '"':
                quote = None if quote == '"' else '"'
            elif c == "'" and quote is None:
                quote = "'"
            out.append(c)
            word_start = c in " \t\n" and quote is None
            if word_start:
                word_from = len(out)
            i += 1
        return "".join(out)


def _assignments(words: list[str]) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """Leading NAME=value words (value, append) and the rest of the words."""
    found: dict[str, tuple[str, bool]] = {}
    k = 0
    while k < len(words):
        match = ASSIGNMENT.match(words[k])
        if not match:
            break
        found[match.group(1)] = (match.group(3), bool(match.group(2)))
        k += 1
    return found, words[k:]


def _taint(tainted: dict[str, str], name: str, unresolved: list[str]) -> None:
    if unresolved:
        tainted[name] = ", ".join(unresolved)
    else:
        tainted.pop(name, None)


def read_script(text: str, environ: Mapping[str, str] | None = None) -> list[Statement]:
    """The simple commands of a bash script, expanded, in order (assignments applied, never run)."""
    environ = dict(os.environ if environ is None else environ)
    variables: dict[str, str] = {}
    tainted: dict[str, str] = {}
    statements: list[Statement] = []
    for line, raw in split_statements(text):
        expander = _Expander(variables, environ, tainted)
        try:
            words = shlex.split(expander.expand(raw))
        except ValueError as exc:
            raise ShellSyntaxError(f"line {line}: {exc}") from None
        while words and words[0] in RESERVED:
            words = words[1:]
        if not words or words[0] in SKIPPED:
            continue
        if words[0] in DECLARERS:
            for word in words[1:]:
                match = ASSIGNMENT.match(word)
                if match:
                    name, append, value = match.group(1), match.group(2), match.group(3)
                    variables[name] = variables.get(name, "") + value if append else value
                    _taint(tainted, name, expander.unresolved)
            continue
        if words[0] == "unset":
            for name in words[1:]:
                variables.pop(name, None)
            continue
        prefix, rest = _assignments(words)
        if not rest:  # a plain assignment statement
            for name, (value, append) in prefix.items():
                variables[name] = (variables.get(name, environ.get(name, "")) + value) if append else value
                _taint(tainted, name, expander.unresolved)
            continue
        statements.append(Statement(tuple(rest), line, {k: v for k, (v, _a) in prefix.items()},
                                    tuple(expander.unresolved), dict(variables)))
    return statements
