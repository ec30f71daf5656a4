"""LD904: an argument of the launch that the training script's HfArgumentParser rejects."""
from __future__ import annotations

import difflib
from typing import Iterable

from llava_doctor.artifacts.launch import Launch
from llava_doctor.findings import Finding, Severity
from llava_doctor.preflight.arguments import RENAMED, codebase_only_flags
from llava_doctor.registry import Check, Context, Example

from ._launch_examples import FINETUNE, ONEVISION, QWEN2_7B, QWEN_SPECIALS, SIGLIP_SO400M, launch

OTHER = {"llava": "LLaVA", "llava-next": "LLaVA-NeXT"}


def _hint(launch_: Launch, argument: str) -> str:
    name = argument.split()[0].lstrip("-").split("=", 1)[0].replace("-", "_")
    if name in RENAMED and RENAMED[name][0] in launch_.accepted:
        new, when = RENAMED[name]
        return f"; --{name} was {when}: use --{new} with transformers {launch_.transformers_version}"
    owner = codebase_only_flags().get(name)
    if owner and owner != launch_.codebase:
        return (f"; --{name} is a {OTHER[owner]} flag and this launch runs {OTHER[launch_.codebase]}'s train.py "
                f"({launch_.codebase_reason})")
    close = difflib.get_close_matches(name, sorted(launch_.accepted), n=1, cutoff=0.8)
    return f"; did you mean --{close[0]}?" if close else ""


class LaunchArguments(Check):
    code = "LD904"
    title = "launch argument the training script's parser rejects"
    artifact = "Launch"
    severity = Severity.ERROR
    rationale = """
    LLaVA's and LLaVA-NeXT's train.py read their command line with `transformers.HfArgumentParser(
    (ModelArguments, DataArguments, TrainingArguments)).parse_args_into_dataclasses()`. An option no
    dataclass defines ends the run at launch with `ValueError: Some specified arguments are not used
    by the HfArgumentParser: ['--unfreeze_mm_vision_tower', 'True']` - after the launcher has started
    every process and the cluster job has waited for its nodes; a value of the wrong type
    (`--model_max_length 2k`, `--bf16 ture`) exits with argparse's `error: argument --bf16: Truthy
    value expected`; a flag without its value swallows the next option or exits with `expected one
    argument` (a variable the script never set, `--run_name $MID_RUN_NAME`, expands to nothing). The
    accepted set is the codebase's own dataclasses (the user's train.py when the checkout is on disk)
    plus the installed transformers' TrainingArguments, which changes across versions: LLaVA's scripts
    pass `--evaluation_strategy`, renamed `eval_strategy` in transformers 4.41 and gone in 4.46; and
    the two codebases differ (`--mm_tunable_parts`, `--unfreeze_mm_vision_tower` and
    `--mm_vision_tower_lr` exist only in LLaVA-NeXT).
    """
    fix = """
    Remove or rename the argument (the finding names the field it resembles or the version that
    renamed it), give its value, or run the codebase that defines it (`--codebase llava-next` tells
    preflight which one the command runs when it cannot read the checkout).
    """
    valid = (
        Example("LLaVA v1.5 finetune.sh", launch(FINETUNE)),
        Example("LLaVA-NeXT OneVision flags on LLaVA-NeXT", launch(ONEVISION, codebase="llava-next", model=QWEN2_7B,
                                                                     tower=SIGLIP_SO400M, specials=QWEN_SPECIALS)),
    )
    invalid = (
        Example("a LLaVA-NeXT flag on LLaVA", launch({**FINETUNE, "unfreeze_mm_vision_tower": True}), count=1,
                contains=("unfreeze_mm_vision_tower", "LLaVA-NeXT flag", "not used by the HfArgumentParser")),
        Example("a misspelt flag", launch({**FINETUNE, "model_max_lenght": 2048}), count=1,
                contains=("did you mean --model_max_length",)),
        Example("a value of the wrong type", launch({**FINETUNE, "model_max_length": "2k"}), count=1,
                contains=("invalid int value: '2k'",)),
    )

    def run_launch(self, artifact: Launch, context: Context) -> Iterable[Finding]:
        for rejected in artifact.rejected:
            hint = _hint(artifact, rejected.argument) if rejected.problem in ("unknown", "ambiguous") else ""
            yield self.finding(
                f"{rejected.argument}: {rejected.message}{hint}; expected only arguments "
                f"{OTHER[artifact.codebase]}'s train.py accepts",
                artifact=artifact.name, location=rejected.argument.split()[0], observed=rejected.argument,
                expected=f"an argument of {artifact.parser_source}", phase="launch", problem=rejected.problem)
        if artifact.unresolved:
            yield self.finding(
                f"{len(artifact.unresolved)} expansion(s) in the launch need a shell to evaluate "
                f"({', '.join(artifact.unresolved[:4])}{', ...' if len(artifact.unresolved) > 4 else ''}); they were "
                "read as empty, as bash reads an unset variable; expected values preflight can read",
                artifact=artifact.name, location=f"line {artifact.line}" if artifact.line else "",
                observed=list(artifact.unresolved), expected="literal values or variables set in the script",
                severity=Severity.INFO, phase="launch",
                fix="Set those variables in the script (or export them before running preflight), or check the "
                    "words they feed by hand: preflight never runs a command substitution.")
