"""`llava-doctor preflight`: the pre-training sanity check, on the user's own launch command.

    llava-doctor preflight -- deepspeed llava/train/train_mem.py --deepspeed ./scripts/zero3.json ...
    llava-doctor preflight scripts/v1_5/finetune.sh
    llava-doctor preflight args.toml            (or args.yaml: a table of train.py arguments)

The script is parsed, never executed or sourced.
"""
from __future__ import annotations

import os

import click

from .common import emit, guarded, output_options, resolve_settings

CODEBASES = ("llava", "llava-next")
STAGES = ("pretrain", "finetune", "lora")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("launch", nargs=-1, type=click.UNPROCESSED)
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where the launch runs (relative paths resolve from here). Default: the current directory.")
@click.option("--codebase", type=click.Choice(CODEBASES), default=None,
              help="The training code the command runs, when preflight cannot tell it from its checkout or flags.")
@click.option("--map", "maps", multiple=True, metavar="ID=DIR",
              help="A local folder for a hub id or path of the launch (repeatable).")
@click.option("--stage", type=click.Choice(STAGES), default=None,
              help="The stage the run is meant to be (default: from --version plain or the stage flags).")
@click.option("--launch", "launch_index", type=click.IntRange(min=1), default=None, metavar="N",
              help="Which training launch of a script to read (default: the first).")
@click.option("--max-images", type=click.IntRange(min=0), default=None, metavar="N",
              help="Image references whose existence is checked, evenly spaced (default 20000).")
@click.option("--decode-images", type=click.IntRange(min=0), default=None, metavar="N",
              help="Existing images opened and decoded (default 64).")
@click.option("--smoke", is_flag=True, help="Also build the model and run one real batch forward/backward.")
@click.option("--device", default=None, help="Device for --smoke (cpu, cuda, cuda:1).")
@output_options
@guarded
def preflight(launch, workdir, codebase, maps, stage, launch_index, max_images, decode_images, smoke, device, select,
              ignore, fail_on, fmt, exit_zero, output) -> int:
    """Check a training launch before it runs: arguments, references, DeepSpeed config, dtype, trainable
    policy, data and images - one report, ordered by when each problem would bite.

    LAUNCH is a launch script, a TOML/YAML file of train.py arguments, or the command itself after `--`.
    """
    from ..artifacts.launch import read_launch
    from ..findings import InputError
    from ..preflight.resolve import parse_maps
    from ..preflight.runner import check_launch

    if device is not None and not smoke:
        raise InputError("--device is for --smoke")
    settings = resolve_settings(select=select, ignore=ignore, fail_on=fail_on, fmt=fmt, stage=stage, kinds=("Launch",))
    artifact = read_launch(_source(launch), workdir=workdir, codebase=codebase, maps=parse_maps(maps), launch=launch_index,
                           max_images=max_images, decode_images=decode_images)
    report = check_launch(artifact, stage=settings.stage, select=settings.select, ignore=settings.ignore,
                          severity=settings.severity)
    if smoke:
        from ..core.smoke import smoke_step

        report.merge(smoke_step(artifact, device=device, stage=settings.stage, select=settings.select,
                                ignore=settings.ignore))
    return emit(report, settings, output=output, exit_zero=exit_zero,
                epilogue=summary(report.stats.get("preflight", {})) if settings.format == "text" else "")


def _source(launch: tuple[str, ...]):
    from ..findings import InputError

    if not launch:
        raise InputError("nothing to check: give a launch script, an arguments file, or the command after `--` "
                         "(llava-doctor preflight -- deepspeed llava/train/train_mem.py ...)")
    if len(launch) == 1 and (os.path.exists(launch[0]) or not launch[0].isidentifier()):
        if not os.path.exists(launch[0]):
            raise InputError(f"{launch[0]}: no such file")
        return launch[0]
    return list(launch)


def summary(stats: dict) -> str:
    """What was read and what the run would lose, under the findings (text format only)."""
    if not stats:
        return ""
    lines = [f"launch: {stats.get('launcher')} {stats.get('script') or ''} ({stats.get('codebase')}: "
             f"{stats.get('codebase_reason')}); stage {stats.get('stage')} ({stats.get('stage_reason')})"]
    trains = [c for c, on in (stats.get("trainable") or {}).items() if on]
    lines.append(f"trains: {', '.join(trains) or 'nothing'}")
    data = stats.get("data") or {}
    if data.get("samples"):
        images = data.get("images")
        lines.append(f"data: {data['samples']} samples; dropped {data.get('dropped', 0)}, crashed {data.get('crashed', 0)}, "
                     f"truncated {data.get('truncated', 0)}"
                     + (f"; images: {images['checked']} of {images['references']} checked, {images['decoded']} decoded, "
                        f"~{images['estimated_missing']} missing" if images else "")
                     + (f" -> {data['fraction_lost']:.1%} of the samples lost" if "fraction_lost" in data else ""))
    if not str(stats.get("tokenization_audit", "")).startswith("ran"):
        lines.append(f"tokenization audit: {stats.get('tokenization_audit')}")
    for note in stats.get("notes") or ():
        lines.append(f"note: {note}")
    return "\n".join(lines)
