"""The training script's arguments, parsed as ``HfArgumentParser`` parses them, and what it would reject.

The accepted set is ``ModelArguments`` + ``DataArguments`` + ``TrainingArguments`` of the codebase
(LLaVA's or LLaVA-NeXT's ``train.py``) on top of the installed transformers' ``TrainingArguments``.
Both are read as source text with :mod:`ast`, never imported: the codebase's dataclasses from the
user's own ``train.py`` when the checkout is on disk, else the tables below (read from
haotian-liu/LLaVA @c121f04 and LLaVA-VL/LLaVA-NeXT @df17966); transformers' from its installed
``training_args.py`` (field names differ across versions: ``evaluation_strategy`` became
``eval_strategy``). Parsing follows argparse as HfArgumentParser configures it: ``--name`` (and
``--name-with-dashes`` where the installed version adds it), ``--no_name`` for booleans that
default to True, ``--flag`` alone meaning True, unique prefixes accepted, ``=`` values, and
leftovers raising ``ValueError: Some specified arguments are not used by the HfArgumentParser``.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

CODEBASES = ("llava", "llava-next")
TRUE_WORDS = ("yes", "true", "t", "y", "1")
FALSE_WORDS = ("no", "false", "f", "n", "0")
NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
# TrainingArguments fields transformers renamed: old name -> (new name, when)
RENAMED = {"evaluation_strategy": ("eval_strategy", "renamed in transformers 4.41, the old name removed in 4.46"),
           "warmup_ratio": ("warmup_steps", "removed in transformers 5, whose warmup_steps takes a ratio below 1")}


@dataclass(frozen=True)
class ArgSpec:
    """One dataclass field as HfArgumentParser turns it into an option."""

    name: str
    kind: str  # bool | int | float | str | list | choice
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    element: str = "str"  # the element kind of a list
    group: str = "training"  # model | data | training (the dataclass it belongs to)
    aliases: tuple[str, ...] = ()

    @property
    def optional_value(self) -> bool:
        """`--flag` alone is allowed (argparse nargs='?', const=True): booleans with a non-None default."""
        return self.kind == "bool" and self.default is not None


def _spec(text: str, group: str) -> ArgSpec:
    name, rest = text.split(":", 1)
    kind, _, default = rest.partition("=")
    return ArgSpec(name.strip(), kind.strip(), ast.literal_eval(default.strip()) if default else None, group=group)


def _table(group: str, text: str) -> tuple[ArgSpec, ...]:
    return tuple(_spec(item, group) for item in text.split(";") if item.strip())


# name:kind=default for every field the codebase's train.py adds (None: no default or None)
_LLAVA = (
    _table("model", """model_name_or_path:str='facebook/opt-125m'; version:str='v0'; freeze_backbone:bool=False;
        tune_mm_mlp_adapter:bool=False; vision_tower:str=None; mm_vision_select_layer:int=-1;
        pretrain_mm_mlp_adapter:str=None; mm_projector_type:str='linear'; mm_use_im_start_end:bool=False;
        mm_use_im_patch_token:bool=True; mm_patch_merge_type:str='flat'; mm_vision_select_feature:str='patch'""")
    + _table("data", """data_path:str=None; lazy_preprocess:bool=False; is_multimodal:bool=False; image_folder:str=None;
        image_aspect_ratio:str='square'""")
    + _table("training", """cache_dir:str=None; optim:str='adamw_torch'; remove_unused_columns:bool=False;
        freeze_mm_mlp_adapter:bool=False; mpt_attn_impl:str='triton'; model_max_length:int=512; double_quant:bool=True;
        quant_type:str='nf4'; bits:int=16; lora_enable:bool=False; lora_r:int=64; lora_alpha:int=16;
        lora_dropout:float=0.05; lora_weight_path:str=''; lora_bias:str='none'; mm_projector_lr:float=None;
        group_by_modality_length:bool=False""")
)
_LLAVA_NEXT = (
    _table("model", """model_name_or_path:str='facebook/opt-125m'; model_class_name:str=None; mm_tunable_parts:str=None;
        version:str='v0'; freeze_backbone:bool=False; tune_mm_mlp_adapter:bool=False; tune_mm_vision_resampler:bool=False;
        vision_tower:str=None; vision_tower_pretrained:str=None; unfreeze_mm_vision_tower:bool=False;
        unfreeze_language_model:bool=False; mm_vision_select_layer:int=-1; pretrain_mm_mlp_adapter:str=None;
        mm_projector_type:str='linear'; mm_use_im_start_end:bool=False; mm_use_im_patch_token:bool=True;
        mm_patch_merge_type:str='flat'; mm_vision_select_feature:str='patch'; mm_resampler_type:str=None;
        mm_mask_drop_mode:str='fixed'; mm_mask_drop_skip_percentage:float=0.0; mm_mask_drop_ratio:float=0.25;
        mm_mask_drop_ratio_upper:float=None; mm_mask_drop_ratio_lower:float=None; mm_spatial_pool_stride:int=None;
        mm_spatial_pool_mode:str='bilinear'; mm_spatial_pool_out_channels:int=None; mm_perceiver_depth:int=3;
        mm_perceiver_latents:int=32; mm_perceiver_ff_mult:float=4; mm_perceiver_pretrained:str=None;
        mm_qformer_depth:int=3; mm_qformer_latents:int=32; mm_qformer_pretrained:str=None;
        rope_scaling_factor:float=None; rope_scaling_type:str=None; s2:bool=False; s2_scales:str='336,672,1008';
        use_pos_skipping:bool=False; pos_skipping_range:int=4096; mm_newline_position:str='grid'; delay_load:bool=True;
        add_faster_video:bool=False; faster_token_stride:int=10""")
    + _table("data", """data_path:str=None; lazy_preprocess:bool=False; is_multimodal:bool=False; early_mix_text:bool=False;
        image_folder:str=None; image_aspect_ratio:str='square'; image_grid_pinpoints:str=None;
        image_crop_resolution:int=None; image_split_resolution:int=None; video_folder:str=None; video_fps:int=1;
        frames_upbound:int=0; add_time_instruction:bool=False; force_sample:bool=False""")
    + _table("training", """cache_dir:str=None; optim:str='adamw_torch'; remove_unused_columns:bool=False;
        freeze_mm_mlp_adapter:bool=False; freeze_mm_vision_resampler:bool=False; mpt_attn_impl:str='triton';
        model_max_length:int=4096; double_quant:bool=True; quant_type:str='nf4'; bits:int=16; lora_enable:bool=False;
        lora_r:int=64; lora_alpha:int=16; lora_dropout:float=0.05; lora_weight_path:str=''; lora_bias:str='none';
        mm_projector_lr:float=None; mm_vision_tower_lr:float=None; group_by_varlen:bool=False;
        group_by_modality_length:bool=False; group_by_modality_length_auto:bool=False; auto_find_batch_size:bool=False;
        gradient_checkpointing:bool=True; verbose_logging:bool=False; attn_implementation:str='flash_attention_2';
        trainer_mode:str='regular'; zo_eps:float=0.001; zo_num_directions:int=1""")
)
BUILTIN_ARGS = {"llava": _LLAVA, "llava-next": _LLAVA_NEXT}
BUILTIN_SOURCE = {"llava": "haotian-liu/LLaVA train.py @c121f04", "llava-next": "LLaVA-VL/LLaVA-NeXT train.py @df17966"}


def codebase_only_flags() -> dict[str, str]:
    """Field name -> the one codebase whose train.py defines it (flags that tell the codebases apart).

    Fields transformers' own TrainingArguments has (LLaVA-NeXT re-declares gradient_checkpointing)
    tell nothing: both codebases accept them.
    """
    hf = installed_hf_arguments()
    shared = {s.name for s in hf.fields} if hf else set()
    llava = {s.name for s in _LLAVA} - shared
    nxt = {s.name for s in _LLAVA_NEXT} - shared
    return {**{n: "llava" for n in llava - nxt}, **{n: "llava-next" for n in nxt - llava}}


# ---------------------------------------------------------------------------------------------
# dataclass fields from source text


def _kind_of(annotation: ast.expr | None) -> tuple[str, tuple[Any, ...], str]:
    """(kind, choices, list element kind) of an annotation, resolving unions the way HfArgumentParser does."""
    if annotation is None:
        return "str", (), "str"
    parts = _union_parts(annotation)
    if parts is not None:
        names = [ast.unparse(p).replace("typing.", "") for p in parts]
        if len(parts) < 2:
            return _kind_of(parts[0]) if parts else ("str", (), "str")
        if "None" not in names:  # Union[X, str]: the non-str member
            return _kind_of(parts[0] if names[1] == "str" else parts[1])
        if "bool" in names:
            return "bool", (), "str"
        return _kind_of(parts[0] if names[1] == "None" else parts[1])
    text = ast.unparse(annotation).replace("typing.", "")
    if text in ("bool", "int", "float", "str"):
        return text, (), "str"
    if re.match(r"^(list|List)\[", text):
        inner = annotation.slice if isinstance(annotation, ast.Subscript) else None
        element = _kind_of(inner)[0] if inner is not None else "str"
        return "list", (), element
    if re.match(r"^Literal\[", text) and isinstance(annotation, ast.Subscript):
        values = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        try:
            return "choice", tuple(ast.literal_eval(v) for v in values), "str"
        except ValueError:
            return "str", (), "str"
    return "str", (), "str"  # enums, dicts: any string is taken here and checked later by the training code


def _union_parts(annotation: ast.expr) -> list[ast.expr] | None:
    """The members of a Union / Optional / `X | Y` annotation, nested unions flattened in order."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        members = [annotation.left, annotation.right]
    elif isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).replace("typing.", "") in ("Optional", "Union"):
        inner = list(annotation.slice.elts) if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        members = inner + ([ast.Constant(None)] if ast.unparse(annotation.value).endswith("Optional") else [])
    else:
        return None
    flat: list[ast.expr] = []
    for member in members:
        nested = _union_parts(member)
        for item in nested if nested is not None else [member]:
            if ast.unparse(item) not in [ast.unparse(f) for f in flat]:
                flat.append(item)
    return flat


def _literal(node: ast.expr | None) -> tuple[bool, Any]:
    if node is None:
        return False, None
    try:
        return True, ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return True, None  # a default we cannot evaluate statically (an enum member, a call)


def _field_spec(stmt: ast.AnnAssign, group: str) -> ArgSpec | None:
    if not isinstance(stmt.target, ast.Name) or stmt.target.id.startswith("_"):
        return None
    name = stmt.target.id
    kind, choices, element = _kind_of(stmt.annotation)
    has_default, default = _literal(stmt.value)
    aliases: tuple[str, ...] = ()
    value = stmt.value
    if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] == "field":
        keywords = {k.arg: k.value for k in value.keywords if k.arg}
        has_default, default = _literal(keywords.get("default"))
        if "default_factory" in keywords:
            has_default, default = True, None
        metadata = keywords.get("metadata")
        if isinstance(metadata, ast.Dict):
            for key, item in zip(metadata.keys, metadata.values):
                if isinstance(key, ast.Constant) and key.value == "aliases":
                    ok, found = _literal(item)
                    if ok and found:
                        aliases = tuple([found] if isinstance(found, str) else found)
    required = not has_default and kind != "bool"
    if kind == "bool" and not has_default:
        default = False
    return ArgSpec(name, kind, default, required, choices, element, group, aliases)


def dataclass_fields(source: str, class_name: str, group: str = "training") -> tuple[ArgSpec, ...] | None:
    """The fields of `class_name` in Python source text (None when the class is not there)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            specs = [_field_spec(s, group) for s in node.body if isinstance(s, ast.AnnAssign)]
            return tuple(s for s in specs if s is not None)
    return None


GROUPS = (("ModelArguments", "model"), ("DataArguments", "data"), ("TrainingArguments", "training"))


def train_py_fields(source: str) -> tuple[ArgSpec, ...] | None:
    """ModelArguments + DataArguments + TrainingArguments of a LLaVA-family train.py (None if it has none)."""
    found: list[ArgSpec] = []
    for class_name, group in GROUPS:
        specs = dataclass_fields(source, class_name, group)
        if specs is None:
            return None
        found.extend(specs)
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# the installed transformers


@dataclass(frozen=True)
class HfArguments:
    """What the installed transformers contributes: its TrainingArguments fields and parser behaviour."""

    version: str | None
    fields: tuple[ArgSpec, ...]
    dash_aliases: bool  # --name-with-dashes accepted (transformers >= 4.38-ish)
    source: str


def _transformers_dir() -> str | None:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=4)
def installed_hf_arguments(directory: str | None = None) -> HfArguments | None:
    """TrainingArguments of the transformers installed here (read as text: no import, no torch)."""
    from ..files import read_text

    directory = directory or _transformers_dir()
    if directory is None:
        return None
    try:
        training = read_text(os.path.join(directory, "training_args.py"), limit=4 * 1024 * 1024)
        parser = read_text(os.path.join(directory, "hf_argparser.py"), limit=1024 * 1024)
    except Exception:  # an install we cannot read: the caller says what was not checked
        return None
    fields = dataclass_fields(training, "TrainingArguments", "training")
    if not fields:
        return None
    dash = "replace('_', '-')" in parser or 'replace("_", "-")' in parser
    return HfArguments(_transformers_version(directory), fields, dash, os.path.join(directory, "training_args.py"))


def _transformers_version(directory: str) -> str | None:
    """`__version__` from the package's own __init__.py (the copy that will run), else its metadata."""
    from importlib import metadata

    from ..files import read_text

    try:
        match = re.search(r'__version__\s*=\s*"([^"]+)"', read_text(os.path.join(directory, "__init__.py"), limit=1 << 20))
        if match:
            return match.group(1)
    except Exception:
        pass
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def merge_specs(hf: Iterable[ArgSpec], codebase: Iterable[ArgSpec]) -> dict[str, ArgSpec]:
    """transformers' fields overridden by the codebase's (its TrainingArguments subclasses HF's)."""
    table = {s.name: s for s in hf}
    for spec in codebase:
        table[spec.name] = spec
    return table


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class Rejected:
    """One piece of argv HfArgumentParser would refuse, with the error it raises."""

    argument: str
    problem: str  # unknown | invalid | missing-value | ambiguous | required | positional
    message: str  # the parser's own words


@dataclass
class ParsedArguments:
    values: dict[str, Any] = field(default_factory=dict)  # every field: given value or default
    given: dict[str, str] = field(default_factory=dict)  # field -> the option as written
    rejected: list[Rejected] = field(default_factory=list)


def _to_bool(text: str) -> bool:
    low = text.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ValueError(f"Truthy value expected: got {text} but expected one of yes/no, true/false, t/f, y/n, 1/0 "
                     "(case insensitive).")


def convert(spec: ArgSpec, text: Any, kind: str | None = None) -> Any:
    """`text` as the field's type; ValueError with argparse's wording when it is not one."""
    kind = kind or spec.kind
    if not isinstance(text, str):
        if kind == "bool" and isinstance(text, bool) or kind == "int" and isinstance(text, int) and not isinstance(text, bool):
            return text
        if kind == "float" and isinstance(text, (int, float)) and not isinstance(text, bool):
            return float(text)
        if kind == "list" and isinstance(text, (list, tuple)):
            return [convert(spec, v, spec.element) for v in text]
        if kind in ("str", "choice") and text is not None:
            text = str(text)
        else:
            raise ValueError(f"invalid {kind} value: {text!r}")
    if kind == "bool":
        return _to_bool(text)
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"invalid int value: {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"invalid float value: {text!r}") from None
    if kind == "choice":
        for choice in spec.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"invalid choice: {text!r} (choose from {', '.join(repr(c) for c in spec.choices)})")
    return text


class _Options:
    """Option string -> (field, store-false) as HfArgumentParser registers them."""

    def __init__(self, specs: Mapping[str, ArgSpec], dash_aliases: bool):
        self.table: dict[str, tuple[ArgSpec, bool]] = {}
        for spec in specs.values():
            names = [f"--{spec.name}", *spec.aliases]
            if dash_aliases and "_" in spec.name:
                names.append(f"--{spec.name.replace('_', '-')}")
            for n in names:
                self.table[n] = (spec, False)
            if spec.kind == "bool" and spec.default is True:
                self.table[f"--no_{spec.name}"] = (spec, True)
                if dash_aliases:
                    self.table[f"--no-{spec.name.replace('_', '-')}"] = (spec, True)

    def find(self, name: str) -> tuple[tuple[ArgSpec, bool] | None, list[str]]:
        """Exact match, else argparse's unique-prefix match; ([candidates]) when ambiguous."""
        if name in self.table:
            return self.table[name], []
        if name.startswith("--") and len(name) > 2:
            hits = sorted(o for o in self.table if o.startswith(name))
            if len({self.table[h][0].name for h in hits} | set()) == 1 and len({self.table[h][1] for h in hits}) == 1:
                return self.table[hits[0]], []
            if hits:
                return None, hits
        return None, []


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-" and not NUMBER.match(token)


def _option_groups(tokens: Sequence[str]) -> list[list[str]]:
    """Leftover tokens as [option, its values...] groups (a leading positional forms its own group)."""
    groups: list[list[str]] = []
    for token in tokens:
        if _is_option(token) or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def parse_arguments(argv: Sequence[str], specs: Mapping[str, ArgSpec], *, dash_aliases: bool) -> ParsedArguments:
    """Parse `argv` the way HfArgumentParser(...).parse_args_into_dataclasses() would."""
    options = _Options(specs, dash_aliases)
    parsed = ParsedArguments(values={name: spec.default for name, spec in specs.items()})
    leftovers: list[str] = []
    k = 0
    while k < len(argv):
        token = argv[k]
        if token == "--":
            leftovers.extend(argv[k + 1:])
            break
        if not _is_option(token):
            leftovers.append(token)
            k += 1
            continue
        name, eq, inline = token.partition("=")
        found, ambiguous = options.find(name)
        if ambiguous:
            k += 1
            values = []
            while k < len(argv) and not _is_option(argv[k]):
                values.append(argv[k])
                k += 1
            parsed.rejected.append(Rejected(" ".join([token, *values]), "ambiguous",
                                            f"ambiguous option: {name} could match {', '.join(ambiguous)}"))
            continue
        if found is None:
            leftovers.append(token)
            k += 1
            continue
        spec, store_false = found
        values: list[str] = [inline] if eq else []
        k += 1
        if not eq and not store_false:
            if spec.kind == "list":
                while k < len(argv) and not _is_option(argv[k]):
                    values.append(argv[k])
                    k += 1
            elif k < len(argv) and not _is_option(argv[k]):
                values.append(argv[k])
                k += 1
        option = f"argument {name}"
        if store_false:
            if eq:
                parsed.rejected.append(Rejected(token, "invalid", f"{option}: ignored explicit argument {inline!r}"))
                continue
            parsed.values[spec.name], parsed.given[spec.name] = False, name
            continue
        if not values:
            if spec.optional_value:
                parsed.values[spec.name], parsed.given[spec.name] = True, name
                continue
            wanted = "expected at least one argument" if spec.kind == "list" else "expected one argument"
            parsed.rejected.append(Rejected(token, "missing-value", f"{option}: {wanted}"))
            continue
        try:
            value = [convert(spec, v, spec.element) for v in values] if spec.kind == "list" else convert(spec, values[0])
        except ValueError as exc:
            parsed.rejected.append(Rejected(f"{token} {values[0]}" if not eq else token, "invalid", f"{option}: {exc}"))
            continue
        parsed.values[spec.name], parsed.given[spec.name] = value, name
    for group in _option_groups(leftovers):
        parsed.rejected.append(Rejected(" ".join(group), "unknown" if _is_option(group[0]) else "positional",
                                        f"Some specified arguments are not used by the HfArgumentParser: {leftovers}"))
    missing = [f"--{s.name}" for s in specs.values() if s.required and s.name not in parsed.given]
    if missing:
        parsed.rejected.append(Rejected(" ".join(missing), "required",
                                        f"the following arguments are required: {', '.join(missing)}"))
    return parsed


def parse_mapping(values: Mapping[str, Any], specs: Mapping[str, ArgSpec]) -> ParsedArguments:
    """A TOML/YAML table of arguments, the way HfArgumentParser.parse_dict reads one."""
    parsed = ParsedArguments(values={name: spec.default for name, spec in specs.items()})
    unused = sorted(k for k in values if k not in specs)
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            continue
        try:
            parsed.values[key] = convert(spec, value)
            parsed.given[key] = key
        except ValueError as exc:
            parsed.rejected.append(Rejected(f"{key} = {value!r}", "invalid", f"{key}: {exc}"))
    if unused:
        parsed.rejected.append(Rejected(", ".join(unused), "unknown",
                                        f"Some keys are not used by the HfArgumentParser: {unused}"))
    missing = [s.name for s in specs.values() if s.required and s.name not in parsed.given]
    if missing:
        parsed.rejected.append(Rejected(", ".join(missing), "required",
                                        f"the following arguments are required: {', '.join(missing)}"))
    return parsed
