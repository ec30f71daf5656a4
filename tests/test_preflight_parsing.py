"""preflight's readers, alone: bash launch scripts (never run), launchers, HfArgumentParser's rules, the HF
cache, DeepSpeed's "auto" filling, projector shapes - each against what the real component does."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llava_doctor.findings import InputError
from llava_doctor.preflight.arguments import (BUILTIN_ARGS, installed_hf_arguments, merge_specs, parse_arguments,
                                              parse_mapping)
from llava_doctor.preflight.command import launch_from_words, launches_in_script, parse_command
from llava_doctor.preflight.resolve import hub_cache, parse_maps, resolve
from llava_doctor.preflight.shell import ShellSyntaxError, read_script

DATA = Path(__file__).parent / "data" / "preflight"
HF = installed_hf_arguments()


def specs(codebase: str = "llava"):
    return merge_specs(HF.fields, BUILTIN_ARGS[codebase])


# ------------------------------------------------------------------------------------------- shell


def test_script_expansion_follows_bash():
    text = r'''
A="x y"   # a comment
B=${A// /_}
export HF_HOME=/tmp/hf
C=$(date)
LLM="Qwen/Qwen2-7B-Instruct"
echo "$A" '$A' ${A} ${B} ${UNSET:-dflt} ${#A} ${A^^} ${A:0:1} $((2*3)) "${LLM//\//_}" ${LLM##*/} ${LLM%/*} "$C"
deepspeed --num_gpus 2 train.py \
   --x="$A" --y $A --z "" --w $NOPE; echo done && echo $1
'''
    statements = read_script(text, {"HOME": "/root"})
    echo, launch, done, positional = statements
    assert echo.words[1:] == ("x y", "$A", "x", "y", "x_y", "dflt", "3", "X", "Y", "x", "6", "Qwen_Qwen2-7B-Instruct",
                              "Qwen2-7B-Instruct", "Qwen", "")
    assert any("C (set from $(date))" == u for u in echo.unresolved)
    assert launch.words == ("deepspeed", "--num_gpus", "2", "train.py", "--x=x y", "--y", "x", "y", "--z", "", "--w")
    assert "NOPE (unset)" in launch.unresolved and launch.variables["HF_HOME"] == "/tmp/hf"
    assert done.words == ("echo", "done") and positional.unresolved == ("$1",)


def test_environment_fills_what_the_script_does_not_set():
    [statement] = read_script("torchrun --nproc_per_node=${NUM_GPUS} train.py --run_name $RUN\n", {"NUM_GPUS": "8"})
    assert statement.words == ("torchrun", "--nproc_per_node=8", "train.py", "--run_name")
    assert statement.unresolved == ("RUN (unset)",)


def test_unclosed_quote_is_one_line():
    with pytest.raises(ShellSyntaxError, match="line 2"):
        read_script('echo ok\ndeepspeed train.py --x "open\n')


# ------------------------------------------------------------------------------------------- launchers


@pytest.mark.parametrize("words,launcher,target,argv", [
    ("deepspeed --num_gpus 8 --master_port=29501 llava/train/train_mem.py --bf16 True", "deepspeed",
     "llava/train/train_mem.py", ("--bf16", "True")),
    ("deepspeed --include localhost:0,1 --module llava.train.train_mem --bf16", "deepspeed", "-m llava.train.train_mem",
     ("--bf16",)),
    ("torchrun --standalone --nproc_per_node=8 llava/train/train_mem.py --x 1", "torchrun", "llava/train/train_mem.py",
     ("--x", "1")),
    ("python -m torch.distributed.run --nproc-per-node 2 train.py --x 1", "torchrun", "train.py", ("--x", "1")),
    ("accelerate launch --multi_gpu --num_processes 8 llava/train/train.py --x 1", "accelerate", "llava/train/train.py",
     ("--x", "1")),
    ("python -u -W ignore llava/train/train_mem.py --x 1", "python", "llava/train/train_mem.py", ("--x", "1")),
    ("python3 -m llava.train.train_mem --x 1", "python", "-m llava.train.train_mem", ("--x", "1")),
    ("env CUDA_VISIBLE_DEVICES=0 nohup deepspeed train.py --x 1", "deepspeed", "train.py", ("--x", "1")),
])
def test_launchers(words, launcher, target, argv):
    command = parse_command(words.split())
    assert (command.launcher, command.target, command.argv) == (launcher, target, argv)


def test_not_a_launch_is_one_line():
    with pytest.raises(InputError, match="not a launch command"):
        launch_from_words(["ls", "-la"])
    with pytest.raises(InputError, match="does not look like a LLaVA"):
        launch_from_words(["python", "scripts/merge_lora_weights.py", "--model-path", "x"])
    assert launches_in_script("set -e\necho hello\nmkdir -p out\npython -c 'print(1)'\n", "run.sh", {}) == []


def test_every_fixture_script_has_one_training_launch():
    for script in sorted(DATA.glob("*.sh")):
        [command] = launches_in_script(script.read_text(), script.name, {})
        assert command.script == "llava/train/train_mem.py" and "--model_name_or_path" in command.argv, script.name


# ------------------------------------------------------------------------------------------- arguments


def test_parser_rules_of_hfargumentparser():
    parsed = parse_arguments(
        ["--bf16", "--no_mm_use_im_patch_token", "--model_max_len", "4096", "--mm_vision_select_layer", "-2",
         "--lora_r=8", "--tune_mm_mlp_adapter", "False", "--output_dir", "out"], specs(), dash_aliases=HF.dash_aliases)
    values = parsed.values
    assert not parsed.rejected, parsed.rejected
    assert values["bf16"] is True and values["mm_use_im_patch_token"] is False and values["model_max_length"] == 4096
    assert values["mm_vision_select_layer"] == -2 and values["lora_r"] == 8 and values["tune_mm_mlp_adapter"] is False
    assert values["model_name_or_path"] == "facebook/opt-125m" and values["model_max_length"] != 512
    bad = parse_arguments(["--bf16", "ture", "--model_max_length", "2k", "--run_name", "--mm_tunable_parts", "x", "stray",
                           "--lora", "1"], specs(), dash_aliases=HF.dash_aliases)
    problems = {r.problem: r for r in bad.rejected}
    invalid = [r.message for r in bad.rejected if r.problem == "invalid"]
    assert any("Truthy value expected" in m for m in invalid) and any("invalid int value: '2k'" in m for m in invalid)
    assert problems["missing-value"].argument == "--run_name"
    assert problems["unknown"].argument == "--mm_tunable_parts x stray"
    assert "could match" in problems["ambiguous"].message


@pytest.fixture(scope="module")
def real_parser():
    """The real HfArgumentParser over dataclasses made from LLaVA's argument table (imports transformers)."""
    import dataclasses
    from typing import Optional

    import transformers

    types = {"bool": bool, "int": Optional[int], "float": Optional[float], "str": Optional[str]}

    def make(name, group, base=()):
        fields = [(s.name, types[s.kind] if s.default is not None or s.kind == "bool" else types[s.kind],
                   dataclasses.field(default=s.default)) for s in BUILTIN_ARGS["llava"] if s.group == group]
        return dataclasses.make_dataclass(name, fields, bases=base)

    classes = (make("ModelArguments", "model"), make("DataArguments", "data"),
               make("TrainingArguments", "training", (transformers.TrainingArguments,)))
    return transformers.HfArgumentParser(classes)


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--output_dir", "o", "--bf16", "True", "--version", "v1", "--mm_vision_select_layer", "-2"],
    ["--output_dir", "o", "--unfreeze_mm_vision_tower", "True"],
    ["--output_dir", "o", "--evaluation_strategy", "no"],
    ["--output_dir", "o", "--warmup_ratio", "0.03"],
    ["--output_dir", "o", "--model_max_length", "2k"],
    ["--output_dir", "o", "--bf16", "ture"],
    ["--output_dir", "o", "--lazy_preprocess"],
    ["--output_dir", "o", "--no_double_quant", "--tf32", "True"],
    ["--output_dir", "o", "--model-max-length", "64"],
    ["--output_dir", "o", "--model_max_len", "64"],
    ["--output_dir", "o", "--lora", "1"],
    ["--output_dir", "o", "--lora_r"],
    ["--output_dir", "o", "extra"],
])
def test_acceptance_matches_the_real_hfargumentparser(real_parser, argv):
    ours = parse_arguments(argv, specs(), dash_aliases=HF.dash_aliases)
    try:  # parse_args_into_dataclasses' own first step; building TrainingArguments would also check the hardware
        _namespace, remaining = real_parser.parse_known_args(args=argv)
        real_ok = not remaining
    except SystemExit:
        real_ok = False
    assert (not ours.rejected) == real_ok, (argv, ours.rejected)


def test_arguments_file_reads_like_parse_dict():
    parsed = parse_mapping({"model_name_or_path": "x", "bf16": True, "model_max_length": "4096", "nope": 1,
                            "output_dir": "out"}, specs())
    assert parsed.values["model_max_length"] == 4096 and parsed.values["bf16"] is True
    assert [r.problem for r in parsed.rejected] == ["unknown"]


# ------------------------------------------------------------------------------------------- hub ids


def _cache_repo(cache: Path, repo: str, commit: str = "a" * 40, refs: bool = True) -> Path:
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    if refs:
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_ids_resolve_through_the_cache_like_transformers(tmp_path):
    cache = tmp_path / "home" / "hub"
    snapshot = _cache_repo(cache, "lmsys/vicuna-7b-v1.5")
    _cache_repo(cache, "org/partial", refs=False)
    env = {"HF_HOME": str(tmp_path / "home")}
    assert hub_cache(env) == str(cache) and hub_cache({"HF_HUB_CACHE": "/x", "HF_HOME": "/y"}) == "/x"
    found = resolve("lmsys/vicuna-7b-v1.5", workdir=str(tmp_path), env=env, maps={})
    assert found.found and found.path == str(snapshot) and "refs/main = aaaaaaa" in found.how
    partial = resolve("org/partial", workdir=str(tmp_path), env=env, maps={})
    assert not partial.found and "no refs/main" in partial.how and not partial.missing_local
    absent = resolve("org/absent", workdir=str(tmp_path), env=env, maps={})
    assert not absent.found and "--map org/absent=DIR" in absent.how
    local = resolve("./checkpoints/x", workdir=str(tmp_path), env=env, maps={})
    assert local.missing_local
    mapped = resolve("org/absent", workdir=str(tmp_path), env=env, maps=parse_maps([f"org/absent={snapshot}"]))
    assert mapped.found and mapped.how == "--map"
    with pytest.raises(InputError, match="ID=DIR"):
        parse_maps(["no-equals-sign"])


# ------------------------------------------------------------------------------------------- DeepSpeed / projectors


def test_auto_keys_are_the_ones_the_installed_transformers_fills():
    from llava_doctor.preflight.deepspeed_config import fill_auto, hf_auto_keys

    keys = hf_auto_keys()
    assert {"train_micro_batch_size_per_gpu", "bf16.enabled", "zero_optimization.reduce_bucket_size"} <= keys
    config = {"bf16": {"enabled": "auto"}, "steps_per_print": "auto", "gradient_accumulation_steps": 4,
              "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}
    args = {"bf16": True, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2}
    filled, mismatches, left = fill_auto(config, args, 64, keys)
    assert filled["bf16"]["enabled"] is True and filled["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert mismatches == ["ds gradient_accumulation_steps=4 vs hf gradient_accumulation_steps=1"]
    assert left == ["steps_per_print"] and "steps_per_print" not in filled


def test_projector_shapes_and_load_errors_match_torch():
    import re

    import torch

    from llava_doctor.preflight.models import load_state_dict_errors, projector_shapes

    def build(kind, mm, hidden):  # the modules LLaVA's build_vision_projector makes
        depth = int(re.match(r"mlp(\d+)x_gelu", kind).group(1)) if kind != "linear" else 0
        if kind == "linear":
            return torch.nn.Linear(mm, hidden)
        layers = [torch.nn.Linear(mm, hidden)]
        for _ in range(1, depth):
            layers += [torch.nn.GELU(), torch.nn.Linear(hidden, hidden)]
        return torch.nn.Sequential(*layers)

    for kind in ("linear", "mlp2x_gelu", "mlp3x_gelu"):
        module = build(kind, 12, 16)
        assert projector_shapes(kind, 12, 16) == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module = build("mlp2x_gelu", 12, 16)
    wrong = {k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError) as raised:
        module.load_state_dict(wrong)
    ours = load_state_dict_errors(projector_shapes("mlp2x_gelu", 12, 16), {k: tuple(v.shape) for k, v in wrong.items()})
    assert ours and all(line in str(raised.value) for line in ours)


def test_tower_classes_follow_the_builders():
    from llava_doctor.preflight.models import tower_class

    assert tower_class("llava-next", "/models/siglip-so400m", True)[0] == "CLIPVisionTower"
    assert tower_class("llava-next", "google/siglip-so400m-patch14-384", False) == ("SigLipVisionTower", "siglip")
    assert tower_class("llava", "google/siglip-so400m-patch14-384", False)[0] == "ValueError"
    assert tower_class("llava", "openai/clip-vit-large-patch14-336", False) == ("CLIPVisionTower", "clip")
    assert tower_class("llava-next", "open_clip_hub:ViT-H-14", False)[0] == "OpenCLIPVisionTower"


def test_nothing_heavy_is_imported_to_parse(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from llava_doctor.preflight.command import launches_in_script; "
            "from llava_doctor.preflight.arguments import installed_hf_arguments; installed_hf_arguments(); "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "[]"
