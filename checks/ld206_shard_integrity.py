"""LD206: structural integrity of checkpoint files (headers, offsets, shard indexes, truncation)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.safetensors_format import printable
from llava_doctor.artifacts.checkpoint import Checkpoint, IntegrityProblem
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example

from ._checkpoint_examples import checkpoint

# Defects a loader tolerates (it recomputes or ignores the value): reported, but not as errors.
_WARNING_KINDS = frozenset({"total-size", "unindexed-key"})

_TENSORS = {"model.mm_projector.0.weight": (8, 4), "model.mm_projector.0.bias": (8,)}


def _with(*problems: IntegrityProblem):
    def build() -> Checkpoint:
        ckpt = checkpoint(_TENSORS, config={"mm_hidden_size": 4})
        ckpt.integrity = list(problems)
        return ckpt

    return build


class ShardIntegrity(Check):
    code = "LD206"
    title = "checkpoint file integrity (headers, offsets, shard index, truncation)"
    artifact = "Checkpoint"
    severity = Severity.ERROR
    rationale = """
        A checkpoint copied or saved half-way (a killed job, a full disk, an interrupted upload)
        still looks like a checkpoint: the file names and the index are there, but a shard is
        missing, a file is cut short, or the header's byte ranges point past the end. Loaders fail
        late and cryptically: safetensors raises `SafetensorError: Error while deserializing header:
        MetadataIncompleteBuffer` or `InvalidOffset`, torch raises `PytorchStreamReader failed
        reading zip archive: failed finding central directory`, and transformers reports
        `model-00002-of-00003.safetensors` as not found only after loading the other shards, or
        silently leaves keys that are in a shard but not in `weight_map` newly initialised. This
        check validates every header and index without reading tensor data: header length and JSON,
        dtypes, shapes against byte ranges, ranges inside the file without overlaps or gaps, every
        shard the index names present and holding exactly the keys mapped to it, and no key stored
        twice.
    """
    fix = """
        Re-copy or re-download the named file and compare sizes/hashes with the source; if the
        source itself is damaged, re-export from the training run (e.g. `save_pretrained` again, or
        `zero_to_fp32` from the DeepSpeed checkpoint). For a stale index, regenerate it with the
        save that wrote the shards instead of editing it by hand.
    """
    valid = (Example("no integrity problems", _with()),)
    invalid = (
        Example(
            "a shard named by the index is missing",
            _with(IntegrityProblem("missing-shard", "model-00002-of-00002.safetensors", "shard named by model.safetensors.index.json for 3 keys does not exist", "lm_head.weight")),
            count=1,
            contains=("model-00002-of-00002.safetensors", "missing-shard"),
        ),
        Example(
            "truncated file and overlapping ranges",
            _with(
                IntegrityProblem("truncated", "model.safetensors", "file is 100 bytes but its header declares 4196"),
                IntegrityProblem("overlap", "model.safetensors", "tensor b: bytes [0, 16) overlap tensor a (ends at 16)", "b"),
            ),
            count=2,
            contains=("truncated", "overlap", "tensor b"),
        ),
    )

    def run(self, artifact: Checkpoint, context: Context) -> Iterable[Finding]:
        for problem in artifact.integrity:
            where = f"{problem.file}:{problem.key}" if problem.key else problem.file
            yield self.finding(
                printable(f"{problem.file}: {problem.kind}: {problem.detail}"),
                artifact=artifact.name,
                location=where,
                observed=problem.detail,
                expected=_EXPECTED.get(problem.kind, "a structurally valid checkpoint file"),
                severity=Severity.WARNING if problem.kind in _WARNING_KINDS else None,
                kind=problem.kind,
            )


_EXPECTED = {
    "missing-shard": "every shard named by the index present",
    "missing-key": "every key mapped to a shard stored in it",
    "unindexed-key": "every stored key listed in weight_map",
    "duplicate-key": "each key stored in exactly one file",
    "offset-out-of-file": "data_offsets inside the file's data area",
    "overlap": "non-overlapping tensor byte ranges",
    "truncated": "the file as long as its header declares, with no trailing bytes",
    "bad-header": "a JSON object header with known dtypes, non-negative shapes and matching byte ranges",
    "header-too-large": "a header of at most 100 MB",
    "bad-index": "an index object with weight_map of tensor name -> shard file",
    "bad-config": "a JSON object",
    "total-size": "metadata total_size equal to the bytes of the indexed tensors",
}
