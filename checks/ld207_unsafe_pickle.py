"""LD207: pickled files needing globals outside the allow-list (never loaded)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.safetensors_format import printable
from llava_doctor.artifacts.checkpoint import Checkpoint, UnsafePickle
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint

GLOBALS_SHOWN = 8


def _with(*unsafe: UnsafePickle):
    def build() -> Checkpoint:
        ckpt = checkpoint({"model.mm_projector.0.weight": (8, 4)}, file="mm_projector.bin", config={"mm_hidden_size": 4})
        ckpt.unsafe = list(unsafe)
        return ckpt

    return build


class UnsafePickleContent(Check):
    code = "LD207"
    title = "unsafe pickle content (not loaded)"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    rationale = """
        `.bin/.pt/.pth` files are Python pickles: `torch.load(weights_only=False)` imports and
        calls whatever globals the file names, so a checkpoint can run arbitrary code (e.g.
        `os.system`) on the machine that loads it. A plain state dict needs only tensors,
        storages, `torch.Size` and `OrderedDict`; torch >= 2.6 loads with `weights_only=True` by
        default and refuses anything else with `WeightsUnpickler error: Unsupported global: GLOBAL
        argparse.Namespace was not an allowed global by default`. llava-doctor lists the globals
        from the pickle opcodes without executing anything and never loads a file that needs more;
        its tensors are therefore not audited.
    """
    fix = """
        Do not load the file with `torch.load(weights_only=False)` unless you trust who made it.
        If you do, convert it once in a trusted, isolated process to a plain state dict saved with
        `safetensors.torch.save_file` (or `torch.save(state_dict)` of tensors only), e.g. drop
        training-framework objects such as `argparse.Namespace`, mmengine `MessageHub` or numpy
        RNG states from the saved dict.
    """
    valid = (Example("only tensor globals", _with()),)
    invalid = (
        Example(
            "a pickle calling os.system",
            _with(UnsafePickle("mm_projector.bin", ("posix.system",))),
            count=1,
            contains=("mm_projector.bin", "posix.system"),
        ),
        Example(
            "two files with framework objects",
            _with(
                UnsafePickle("iter_500.pth", ("argparse.Namespace",)),
                UnsafePickle("rng.pth", ("numpy.core.multiarray._reconstruct", "numpy.dtype")),
            ),
            count=2,
            contains=("argparse.Namespace", "numpy.dtype"),
        ),
    )

    def run(self, artifact: Checkpoint, context: Context) -> Iterable[Finding]:
        for unsafe in artifact.unsafe:
            shown = ", ".join(unsafe.globals[:GLOBALS_SHOWN])
            more = f" and {len(unsafe.globals) - GLOBALS_SHOWN} more" if len(unsafe.globals) > GLOBALS_SHOWN else ""
            yield self.finding(
                printable(f"{unsafe.file}: pickle needs {len(unsafe.globals)} global(s) outside the allow-list: {shown}{more}; not loaded"),
                artifact=artifact.name,
                location=unsafe.file,
                observed=list(unsafe.globals),
                expected="tensors, storages, torch.Size and OrderedDict only",
            )
