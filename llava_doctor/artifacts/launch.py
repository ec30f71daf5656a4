"""The Launch artifact: a training launch command read as the training code would read it.

`read_launch` takes the user's own launch - the words after ``--``, a bash launch script (parsed,
never run or sourced) or a TOML/YAML table of arguments - and records, without running anything
heavy: the launcher and script, the codebase (LLaVA / LLaVA-NeXT) and why, every argument as
``HfArgumentParser`` will parse it (and what it would reject), and the facts behind the launch's
references - the model and vision-tower folders (resolved offline through ``--map`` or the HF
cache) and their configs, the ``--pretrain_mm_mlp_adapter`` tensor table (read without executing
its pickle), the DeepSpeed JSON, the training records and their images (bounded). Checks
(LD301, LD901-LD904) are pure functions of this record; a reference that could not be read
carries the reason, so that a check can say what it did not check.

Every finding about a launch says when the problem would bite: ``phase`` is one of PHASES.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from ..findings import InputError, one_line

PHASES = ("launch", "step 1", "epoch", "save", "inference")
PHASE_LABELS = {"launch": "at launch", "step 1": "at step 1", "epoch": "during the epoch", "save": "at save",
                "inference": "at inference"}
MAX_SCRIPT_BYTES = 1024 * 1024
ARGS_FILE_SUFFIXES = (".toml", ".yaml", ".yml")


def phase_rank(phase: str | None) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


@dataclass(frozen=True)
class Reference:
    """A model-like argument (--model_name_or_path, --vision_tower) and the local folder behind it."""

    flag: str
    value: str
    path: str | None = None
    how: str = ""  # "local path", "--map", "HF cache ...", or why it was not found
    found: bool = False
    config: Mapping[str, Any] | None = None
    config_problem: str | None = None
    special_tokens: frozenset[str] = frozenset()  # tokenizer special / added tokens, for --model_name_or_path

    @property
    def missing_local(self) -> bool:
        return not self.found and self.how.startswith("no such")


@dataclass(frozen=True)
class DeepSpeedFile:
    value: str
    path: str | None = None
    config: Mapping[str, Any] | None = None
    problem: str | None = None  # why HfDeepSpeedConfig cannot load it


@dataclass(frozen=True)
class AdapterFile:
    value: str
    path: str | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None  # every tensor in the file, by key
    problem: str | None = None
    unsafe: tuple[str, ...] = ()  # pickle globals outside the allow-list (the file was not loaded)


@dataclass(frozen=True)
class DataFacts:
    value: str
    files: tuple[str, ...] = ()
    records: int = 0
    problem: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Launch:
    kind: ClassVar[str] = "Launch"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)

    name: str
    codebase: str = "llava"
    codebase_reason: str = ""
    recipe: str = "llava"
    arguments: dict[str, Any] = field(default_factory=dict)  # every field: the parsed value or its default
    given: dict[str, str] = field(default_factory=dict)  # field -> the option as written
    rejected: list[Any] = field(default_factory=list)  # preflight.arguments.Rejected
    accepted: frozenset[str] = frozenset()  # every field name the parser knows
    parser_source: str = ""  # where the accepted argument set came from
    transformers_version: str | None = None
    launcher: str = "python"
    script: str | None = None
    line: int = 0
    workdir: str = "."
    train_py: str | None = None
    lora_fix: bool | None = None  # LLaVA-NeXT checkout has bfbba5a (None: unknown)
    unresolved: tuple[str, ...] = ()  # shell words that could not be expanded without running something
    env: Mapping[str, str] = field(default_factory=dict)
    references: dict[str, Reference] = field(default_factory=dict)
    deepspeed: DeepSpeedFile | None = None
    adapter: AdapterFile | None = None
    data: DataFacts | None = None
    images: Any = None  # preflight.images.ImageCheck
    notes: list[str] = field(default_factory=list)
    records: list[Any] = field(default_factory=list, repr=False)  # the training records (for the data audit)

    def arg(self, name: str, default: Any = None) -> Any:
        value = self.arguments.get(name, default)
        return default if value is None else value

    def flags(self):
        from ..stages import TrainingFlags

        return TrainingFlags.from_mapping(self.arguments)

    @property
    def model(self) -> Reference | None:
        return self.references.get("model_name_or_path")

    @property
    def tower(self) -> Reference | None:
        return self.references.get("vision_tower")

    def where(self, flag: str) -> str:
        """`--flag` as the user wrote it, for a finding's location."""
        return self.given.get(flag, f"--{flag}")


# ---------------------------------------------------------------------------------------------
# reading


def _special_tokens(folder: str | None) -> frozenset[str]:
    """Added/special token strings of a tokenizer folder, from its JSON files (no tokenizer is loaded)."""
    from ..files import read_json

    if not folder or not os.path.isdir(folder):
        return frozenset()
    tokens: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, str):
            tokens.add(value)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            tokens.add(value["content"])
        elif isinstance(value, list):
            for item in value:
                add(item)

    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                data = read_json(path, what=name)
            except InputError:
                continue
            for key in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"):
                add(data.get(key))
            for item in (data.get("added_tokens_decoder") or {}).values():
                add(item)
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path) and not any(t.startswith("<|") for t in tokens):
        try:
            add(read_json(path, what="tokenizer.json").get("added_tokens"))
        except InputError:
            pass
    return frozenset(tokens)


def _reference(flag: str, value: str | None, *, workdir: str, env: Mapping[str, str], maps: Mapping[str, str],
               cache_dir: str | None, tokenizer: bool = False) -> Reference | None:
    from ..preflight.resolve import read_config, resolve

    resolved = resolve(value, workdir=workdir, env=env, maps=maps, cache_dir=cache_dir)
    if resolved is None:
        return None
    config, problem = read_config(resolved.path) if resolved.found and os.path.isdir(resolved.path or "") else (None, None)
    if resolved.found and not os.path.isdir(resolved.path or ""):
        problem = f"{resolved.path} is a file, not a model folder"
    specials = _special_tokens(resolved.path) if tokenizer and resolved.found else frozenset()
    return Reference(flag, resolved.value, resolved.path, resolved.how, resolved.found, config, problem, specials)


def _absolute(value: str, workdir: str) -> str:
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(workdir, value)


def _deepspeed_file(value: str | None, workdir: str) -> DeepSpeedFile | None:
    from ..files import MAX_JSON_BYTES, read_json

    if not value:
        return None
    path = _absolute(value, workdir)
    if not os.path.exists(path):
        try:  # HfDeepSpeedConfig also takes a base64-encoded JSON string
            decoded = json.loads(base64.urlsafe_b64decode(value).decode("utf-8"))
            if isinstance(decoded, dict):
                return DeepSpeedFile(value, None, decoded)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        return DeepSpeedFile(value, None, None, f"no such file: {path} (HfDeepSpeedConfig raises `ValueError: Expected "
                                                 "a string path to an existing deepspeed config, or a dictionary`)")
    try:
        return DeepSpeedFile(value, path, read_json(path, limit=MAX_JSON_BYTES, what="DeepSpeed config"))
    except InputError as exc:
        return DeepSpeedFile(value, path, None, str(exc))


def _adapter_file(value: str | None, workdir: str) -> AdapterFile | None:
    from .readers import open_checkpoint

    if not value:
        return None
    path = _absolute(value, workdir)
    if not os.path.exists(path):
        return AdapterFile(value, None, None, f"no such file: {path} (torch.load raises FileNotFoundError in "
                                              "initialize_vision_modules)")
    if os.path.isdir(path):
        return AdapterFile(value, path, None, f"{path} is a directory; torch.load needs the mm_projector.bin file")
    try:
        checkpoint = open_checkpoint(path)
    except InputError as exc:
        return AdapterFile(value, path, None, str(exc))
    unsafe = tuple(g for u in checkpoint.unsafe for g in u.globals)
    problems = [f"{p.detail}" for p in checkpoint.integrity]
    return AdapterFile(value, path, {t.name: tuple(t.shape) for t in checkpoint.tensors.values()},
                       "; ".join(problems) or None, unsafe)


def _choose(commands: list, index: int | None, name: str):
    if not commands:
        raise InputError(f"{name}: no training launch found (looked for deepspeed, torchrun, accelerate launch or "
                         "python running a LLaVA train*.py or with LLaVA arguments)")
    if index is None:
        return commands[0], len(commands)
    if not 1 <= index <= len(commands):
        raise InputError(f"{name}: --launch {index}: the script has {len(commands)} training launch(es)")
    return commands[index - 1], len(commands)


def read_arguments_file(path: str) -> dict[str, Any]:
    """A TOML or YAML table of train.py arguments (`model_name_or_path = "..."`)."""
    from ..files import read_text

    text = read_text(path, limit=MAX_SCRIPT_BYTES, what="arguments file")
    if path.endswith(".toml"):
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML ({exc})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise InputError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the arguments as TOML") from None
        try:
            table = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({one_line(exc, 160)})") from None
    if not isinstance(table, dict) or not table:
        raise InputError(f"{path}: expected a table of train.py arguments (e.g. model_name_or_path = \"...\")")
    return table


def read_launch(source: str | os.PathLike | Sequence[str], *, workdir: str | os.PathLike | None = None,
                codebase: str | None = None, maps: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None, launch: int | None = None,
                max_images: int | None = None, decode_images: int | None = None) -> Launch:
    """Read a launch: a list of words (the command), a launch script, or a TOML/YAML arguments file."""
    from ..files import read_text
    from ..preflight import arguments as args_mod
    from ..preflight import codebase as codebase_mod
    from ..preflight.command import launch_from_words, launches_in_script

    workdir = os.path.abspath(os.fspath(workdir or os.getcwd()))
    base_env = dict(os.environ if environ is None else environ)
    maps = dict(maps or {})
    notes: list[str] = []
    table = None
    if isinstance(source, (list, tuple)):
        command, name = launch_from_words(list(source)), "launch command"
    else:
        name = os.fspath(source)
        if name.endswith(ARGS_FILE_SUFFIXES):
            command, table = None, read_arguments_file(name)
        else:
            text = read_text(name, limit=MAX_SCRIPT_BYTES, what="launch script")
            command, count = _choose(launches_in_script(text, name, base_env), launch, name)
            if count > 1:
                notes.append(f"{count} training launches in {name}; read launch {launch or 1} (line {command.line}); "
                             "choose another with --launch N")
    env = {**base_env, **(command.env if command else {})}
    script_path = command.script_path(workdir) if command else None
    argv = command.argv if command else ()
    given_names = [a for a in argv if a.startswith("--")] if command else [f"--{k}" for k in table]
    hints = [a for a in argv if not a.startswith("-")] if command else [str(v) for v in table.values()]
    code = codebase_mod.identify(explicit=codebase, script_path=script_path, given=given_names, hints=hints)

    hf = args_mod.installed_hf_arguments()
    if hf is None:
        notes.append("transformers is not installed here: its TrainingArguments flags were accepted unchecked")
    specs = args_mod.merge_specs(hf.fields if hf else (), code.fields)
    if command:
        parsed = args_mod.parse_arguments(argv, specs, dash_aliases=hf.dash_aliases if hf else True)
    else:
        parsed = args_mod.parse_mapping(table, specs)
    if hf is None:
        parsed.rejected = [r for r in parsed.rejected if r.problem != "unknown"]
    values = parsed.values

    result = Launch(
        name=name, codebase=code.name, codebase_reason=code.reason, recipe=code.recipe, arguments=values,
        given=parsed.given, rejected=parsed.rejected, accepted=frozenset(specs),
        parser_source=f"{code.fields_source} + transformers {hf.version} TrainingArguments" if hf else code.fields_source,
        transformers_version=hf.version if hf else None, launcher=command.launcher if command else "arguments file",
        script=command.target if command else None, line=command.line if command else 0, workdir=workdir,
        train_py=code.train_py, lora_fix=code.lora_fix, unresolved=command.unresolved if command else (),
        env=command.env if command else {}, notes=notes,
    )
    cache_dir = values.get("cache_dir")
    for flag, tokenizer in (("model_name_or_path", True), ("vision_tower", False)):
        if values.get(flag):
            ref = _reference(flag, str(values[flag]), workdir=workdir, env=env, maps=maps,
                             cache_dir=cache_dir if flag == "model_name_or_path" else None, tokenizer=tokenizer)
            if ref is not None:
                result.references[flag] = ref
    result.deepspeed = _deepspeed_file(values.get("deepspeed"), workdir)
    result.adapter = _adapter_file(values.get("pretrain_mm_mlp_adapter"), workdir)
    _read_data(result, max_images=max_images, decode_images=decode_images)
    return result


def _read_data(launch: Launch, *, max_images: int | None, decode_images: int | None) -> None:
    from ..preflight.data import load_training_records
    from ..preflight.images import MAX_DECODE, MAX_EXISTS, check_images

    value = launch.arguments.get("data_path")
    if not value:
        return
    source = load_training_records(str(value), launch.codebase, launch.workdir)
    launch.data = DataFacts(str(value), tuple(source.files), len(source.records), source.problem, tuple(source.notes))
    launch.records = source.records
    if source.records:
        launch.images = check_images(source.records, launch.arguments.get("image_folder"), launch.workdir,
                                     max_exists=MAX_EXISTS if max_images is None else max_images,
                                     max_decode=MAX_DECODE if decode_images is None else decode_images)
