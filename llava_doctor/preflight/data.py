"""The training records a launch's ``--data_path`` names, read the way the codebase's dataset reads them.

LLaVA's ``LazySupervisedDataset`` does ``json.load(open(data_path))``: a JSON list, nothing else (a
JSONL file raises ``json.decoder.JSONDecodeError: Extra data`` at launch). LLaVA-NeXT also takes
``/dir/{a,b,c}.json`` (several JSON files) and a ``.yaml`` listing ``datasets: [{json_path,
sampling_strategy}]`` whose files may be JSON or JSONL, sampled ``first:N``/``end:N``/``random:N``
(``N`` or ``N%``); random sampling cannot be predicted, so every record of such a file is read.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..findings import InputError, one_line

MAX_YAML_BYTES = 8 * 1024 * 1024


@dataclass
class DataSource:
    records: list[Any] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the data files read
    problem: str | None = None  # why the training code cannot read it (a launch-time crash)
    notes: list[str] = field(default_factory=list)


def _absolute(path: str, workdir: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def _read_json_list(path: str, *, jsonl_ok: bool) -> list[Any]:
    from ..artifacts.dataset import read_records
    from ..files import open_regular

    with open_regular(path, what="data file") as head:  # regular files only, before read_records opens it
        first = head.read(4096).lstrip()[:1]
    records = read_records(path)
    if not isinstance(records, list):
        raise InputError(f"{path}: top-level JSON is a {type(records).__name__}, not a list of conversations")
    if first != b"[" and not jsonl_ok:
        raise InputError(f"{path}: JSONL; this train.py reads data_path with json.load, which raises "
                         "`json.decoder.JSONDecodeError: Extra data` on more than one line of JSON")
    return records


def _sample(records: list[Any], strategy: str, path: str, notes: list[str]) -> list[Any]:
    if ":" not in strategy:
        return records
    kind, number = strategy.split(":", 1)
    count = math.ceil(int(number.rstrip("%")) * len(records) / 100) if number.endswith("%") else int(number)
    if kind == "first":
        return records[:count]
    if kind == "end":
        return records[-count:]
    if kind == "random":
        notes.append(f"{path}: random:{number} sampling cannot be predicted; all {len(records)} records were read")
    return records


def _yaml(path: str, workdir: str, source: DataSource) -> None:
    from ..files import read_text

    try:
        import yaml
    except ImportError:
        raise InputError(f"{path}: reading a YAML data_path needs PyYAML (pip install pyyaml)") from None
    try:
        table = yaml.safe_load(read_text(path, limit=MAX_YAML_BYTES, what="YAML file"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({one_line(exc, 160)})") from None
    datasets = table.get("datasets") if isinstance(table, dict) else None
    if not isinstance(datasets, list):
        raise InputError(f"{path}: no `datasets:` list (LLaVA-NeXT expects datasets: - json_path: ...)")
    for entry in datasets:
        if not isinstance(entry, dict) or not isinstance(entry.get("json_path"), str):
            raise InputError(f"{path}: a datasets entry without a json_path string: {entry!r}"[:200])
        json_path = _absolute(entry["json_path"], workdir)
        if not json_path.endswith((".json", ".jsonl")):
            raise InputError(f"{path}: {entry['json_path']}: `ValueError: Unsupported file type` (only .json and .jsonl)")
        records = _read_json_list(json_path, jsonl_ok=True)
        strategy = str(entry.get("sampling_strategy", "all"))
        try:
            records = _sample(records, strategy, entry["json_path"], source.notes)
        except ValueError:
            raise InputError(f"{path}: sampling_strategy {strategy!r} of {entry['json_path']} is not `kind:N` or `kind:N%`") from None
        source.records.extend(records)
        source.files.append(json_path)


def load_training_records(data_path: str, codebase: str, workdir: str) -> DataSource:
    """The records the run trains on; `problem` set (and no records) when its dataset would raise."""
    source = DataSource()
    path = _absolute(data_path, workdir)
    try:
        if codebase == "llava-next" and "{" in data_path and "}" in data_path:
            match = re.match(r"^(.*)\{(.*)\}\.json$", path)
            if not match:
                raise InputError(f"{data_path}: a {{a,b}} pattern LLaVA-NeXT cannot match (expected /dir/{{a,b}}.json)")
            for name in match.group(2).split(","):
                file = f"{match.group(1)}{name}.json"
                source.records.extend(_read_json_list(file, jsonl_ok=False))
                source.files.append(file)
        elif codebase == "llava-next" and data_path.endswith(".yaml"):
            _yaml(path, workdir, source)
        else:
            source.records = _read_json_list(path, jsonl_ok=False)
            source.files.append(path)
    except InputError as exc:
        source.records, source.problem = [], str(exc)
    return source
