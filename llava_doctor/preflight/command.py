"""Find the training command in a launch: the launcher, its own options, the script, the script's arguments.

Launchers read as their argument parsers read them: ``deepspeed`` (DeepSpeed's runner), ``torchrun`` /
``python -m torch.distributed.run|launch``, ``accelerate launch``, a plain ``python`` (interpreter
options, ``-m module``), and the wrappers users put in front (``env``, ``nohup``, ``exec``,
``srun``, ``CUDA_VISIBLE_DEVICES=...``). Everything after the script (or module) is the training
script's own argv: that is what ``HfArgumentParser`` will see.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..findings import InputError
from .shell import ShellSyntaxError, Statement, read_script

# option names that take no value, per launcher (everything else takes one)
_DEEPSPEED_FLAGS = {"--module", "--no_python", "--no_local_rank", "--no_ssh", "--no_ssh_check", "--force_multi",
                    "--save_pid", "--bind_cores_to_rank", "-q", "--quiet"}
_TORCHRUN_FLAGS = {"--standalone", "-m", "--module", "--no-python", "--no_python", "--run-path", "--run_path",
                   "--virtual-local-rank", "--virtual_local_rank"}
_ACCELERATE_FLAGS = {"--cpu", "--multi_gpu", "--tpu", "--ipex", "--mps", "--use_xpu", "--use_deepspeed", "--use_fsdp",
                     "--use_megatron_lm", "-m", "--module", "--no_python", "--debug", "-q", "--quiet", "--same_network",
                     "--dynamo_use_fullgraph", "--dynamo_use_dynamic", "--downcast_bf16", "--tpu_use_cluster",
                     "--tpu_use_sudo", "--enable_cpu_affinity", "--use_cpu", "--multi-gpu", "--use-deepspeed",
                     "--use-fsdp", "--no-python"}
_PYTHON_FLAGS = set("-u -O -OO -B -E -s -S -I -b -bb -d -q -v -x -i -P".split())
_PYTHON_VALUED = {"-W", "-X"}
_MODULE_FLAGS = {"-m", "--module"}
_WRAPPERS = {"nohup", "exec", "time", "command", "builtin", "nice", "stdbuf", "taskset", "numactl"}
_TRAIN_SCRIPT = re.compile(r"(^|[/.])train(_mem|_xformers|_dpo)?(\.py)?$")
PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
# flags that only a LLaVA-family train.py defines: a command with none of them is not a LLaVA launch
LLAVA_MARKERS = ("--model_name_or_path", "--data_path", "--vision_tower", "--version", "--mm_projector_type",
                 "--pretrain_mm_mlp_adapter", "--image_folder", "--tune_mm_mlp_adapter", "--mm_tunable_parts")


@dataclass(frozen=True)
class LaunchCommand:
    """The training script's invocation: who launches it, with what, and its own arguments."""

    launcher: str  # deepspeed | torchrun | accelerate | python
    launcher_args: tuple[str, ...]
    script: str | None  # path as written, or None with `module`
    module: str | None
    argv: tuple[str, ...]  # the training script's arguments (HfArgumentParser's input)
    line: int = 0
    env: Mapping[str, str] = field(default_factory=dict)  # assignments in force for this command (script + prefix)
    unresolved: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return self.script or f"-m {self.module}"

    def script_path(self, workdir: str) -> str | None:
        """The script (or the module's file) as a path under `workdir`, whether or not it exists."""
        if self.script:
            return self.script if os.path.isabs(self.script) else os.path.join(workdir, self.script)
        if self.module:
            return os.path.join(workdir, *self.module.split(".")) + ".py"
        return None


def _split_option(word: str) -> tuple[str, str | None]:
    if word.startswith("--") and "=" in word:
        name, value = word.split("=", 1)
        return name, value
    return word, None


def _launcher_options(words: Sequence[str], flags: set[str]) -> tuple[list[str], int, bool]:
    """Consume launcher options from `words`; (the options, index of the first non-option, -m seen)."""
    out: list[str] = []
    module = False
    k = 0
    while k < len(words):
        word = words[k]
        if word == "--":
            return out, k + 1, module
        if not word.startswith("-") or word == "-":
            return out, k, module
        name, inline = _split_option(word)
        out.append(word)
        if name in _MODULE_FLAGS:
            module = True
        if inline is not None or name in flags:
            k += 1
            continue
        nxt = words[k + 1] if k + 1 < len(words) else None
        if nxt is None or nxt.endswith(".py") or (nxt.startswith("-") and not re.fullmatch(r"-\d+", nxt)):
            k += 1  # an option we do not know, followed by the script: a flag
            continue
        out.append(nxt)
        k += 2
    return out, k, module


def _strip_wrappers(words: list[str], env: dict[str, str]) -> list[str]:
    while words:
        head = os.path.basename(words[0])
        if head == "env":
            words = words[1:]
            while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0].startswith("-")):
                if "=" in words[0] and not words[0].startswith("-"):
                    name, value = words[0].split("=", 1)
                    env[name] = value
                words = words[1:]
        elif head in _WRAPPERS:
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[1:]
        elif head == "srun":
            _opts, k, _m = _launcher_options(words[1:], set())
            words = words[1 + k:]
        else:
            return words
    return words


def parse_command(words: Sequence[str], *, line: int = 0, env: Mapping[str, str] | None = None,
                  unresolved: Sequence[str] = ()) -> LaunchCommand | None:
    """The launch in one command's words, or None when the words do not launch a Python training script."""
    env = dict(env or {})
    words = _strip_wrappers(list(words), env)
    if not words:
        return None
    head = os.path.basename(words[0])
    rest = words[1:]
    if head == "deepspeed":
        launcher, flags = "deepspeed", _DEEPSPEED_FLAGS
    elif head == "torchrun":
        launcher, flags = "torchrun", _TORCHRUN_FLAGS
    elif head == "accelerate" and rest[:1] == ["launch"]:
        launcher, flags, rest = "accelerate", _ACCELERATE_FLAGS, rest[1:]
    elif PYTHON.match(head):
        launcher = "python"
        k = 0
        while k < len(rest) and rest[k].startswith("-") and rest[k] not in ("-m", "-c"):
            k += 2 if rest[k] in _PYTHON_VALUED else 1
        if k < len(rest) and rest[k] == "-c":
            return None
        if k + 1 < len(rest) and rest[k] == "-m" and rest[k + 1] in ("torch.distributed.run", "torch.distributed.launch"):
            launcher, flags, rest = "torchrun", _TORCHRUN_FLAGS | {"--use_env", "--use-env"}, rest[k + 2:]
        elif k + 1 < len(rest) and rest[k] == "-m" and rest[k + 1] == "accelerate.commands.launch":
            launcher, flags, rest = "accelerate", _ACCELERATE_FLAGS, rest[k + 2:]
        else:
            options, rest = rest[:k], rest[k:]
            if rest[:1] == ["-m"] and len(rest) > 1:
                return LaunchCommand("python", tuple(options), None, rest[1], tuple(rest[2:]), line, env, tuple(unresolved))
            if rest and rest[0].endswith(".py"):
                return LaunchCommand("python", tuple(options), rest[0], None, tuple(rest[1:]), line, env, tuple(unresolved))
            return None
    else:
        return None
    options, k, module = _launcher_options(rest, flags)
    if k >= len(rest):
        return None
    target, argv = rest[k], tuple(rest[k + 1:])
    if module:
        return LaunchCommand(launcher, tuple(options), None, target, argv, line, env, tuple(unresolved))
    return LaunchCommand(launcher, tuple(options), target, None, argv, line, env, tuple(unresolved))


def is_training(command: LaunchCommand) -> bool:
    """A LLaVA-family training launch: its script is a train*.py, or its arguments are LLaVA's."""
    target = command.module or command.script or ""
    if _TRAIN_SCRIPT.search(target.replace(os.sep, "/")):
        return True
    names = {a.split("=", 1)[0] for a in command.argv if a.startswith("--")}
    return any(marker in names for marker in LLAVA_MARKERS)


def launches_in_script(text: str, name: str, environ: Mapping[str, str] | None = None) -> list[LaunchCommand]:
    """Every training launch in a script, in order; InputError when its text cannot be split into words."""
    try:
        statements: list[Statement] = read_script(text, environ)
    except ShellSyntaxError as exc:
        raise InputError(f"{name}: cannot read as a bash script: {exc}") from None
    found = []
    for statement in statements:
        env = {**statement.variables, **statement.prefix}
        command = parse_command(statement.words, line=statement.line, env=env, unresolved=statement.unresolved)
        if command is not None and is_training(command):
            found.append(command)
    return found


def launch_from_words(words: Sequence[str]) -> LaunchCommand:
    """The command given after `--` on our own command line; InputError when it launches no training script."""
    if not words:
        raise InputError("no launch command after `--` (e.g. llava-doctor preflight -- deepspeed llava/train/train_mem.py ...)")
    command = parse_command(words)
    if command is None:
        joined = " ".join(words[:3])
        raise InputError(f"`{joined} ...` is not a launch command llava-doctor can read (expected deepspeed, torchrun, "
                         "accelerate launch or python with a training script)")
    if not is_training(command):
        raise InputError(f"`{command.target}` does not look like a LLaVA / LLaVA-NeXT training script "
                         f"(no train*.py and none of {', '.join(LLAVA_MARKERS[:4])}, ...)")
    return command
