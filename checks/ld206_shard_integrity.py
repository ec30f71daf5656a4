"""LD206: structural integrity of checkpoint files (headers, offsets, shard indexes, truncation)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from llava_doctor.artifacts.checkpoint import Checkpoint, FileHoles, IntegrityProblem
from llava_doctor.artifacts.holes import overlap
from llava_doctor.artifacts.safetensors_format import printable
from llava_doctor.findings import Finding, Severity, example_names
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


def _sparse(*holes: tuple[int, int]):
    """A projector file of 8 + 100 header bytes, weight at [108, 236), bias at [236, 268), with `holes`."""
    def build() -> Checkpoint:
        ckpt = checkpoint(_TENSORS, config={"mm_hidden_size": 4}, dtype="F32")
        ckpt.tensors = {k: replace(t, offset=o, nbytes=n) for (k, t), (o, n) in
                        zip(sorted(ckpt.tensors.items(), reverse=True), ((108, 128), (236, 32)))}
        ckpt.holes = {"model.safetensors": FileHoles(tuple(holes))} if holes else {}
        return ckpt

    return build


SHOWN = 3


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
        twice. In a `.bin/.pt` zip archive every storage record must hold the bytes its storage
        declares: torch's mmap load does not check and reads past a short record into the next one
        (`torch.load(mmap=False)` fails with `record size (100 bytes) does not match expected size`).
        A sparse weights file (pre-allocated with `fallocate`/`truncate`, or a copy that stopped)
        has holes that were never written: they read as zeros, so every loader accepts them; the
        holes are found with `SEEK_HOLE`/`SEEK_DATA` without reading the file (and the --deep scan
        does not read them either). A tensor at least half in holes is an error; less than half, a
        warning, since some filesystems (ZFS with compression) store written runs of zeros as holes.
        Entries that are not regular files (a FIFO, a device, a socket, a dangling link named like a
        config or a shard) are reported and never opened, and files beyond the size limits (configs
        8 MiB, indexes 32 MiB, a zip's pickle 16 MiB or 2 million opcodes, compressed zip members at
        all) are not read.
    """
    fix = """
        Re-copy or re-download the named file and compare sizes/hashes with the source; if the
        source itself is damaged, re-export from the training run (e.g. `save_pretrained` again, or
        `zero_to_fp32` from the DeepSpeed checkpoint). For a stale index, regenerate it with the
        save that wrote the shards instead of editing it by hand.
    """
    valid = (
        Example("no integrity problems", _with()),
        Example("a hole over a zero-by-design bias only", _sparse((236, 268))),
    )
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
        Example("pre-allocated file: the data area is one hole", _sparse((100, 268)), count=1,
                contains=("model.safetensors: sparse: 1 tensor lies entirely in holes", "model.mm_projector.0.weight",
                          "never written")),
        Example("a hole inside a weight matrix", _sparse((120, 160)), count=1,
                contains=("40 of its 128 bytes",)),
        Example("a pre-allocated tensor: all but its first bytes never written", _sparse((120, 268)), count=1,
                contains=("mostly in holes",)),
    )

    def _holes(self, artifact: Checkpoint, file: str, holes: FileHoles) -> Iterable[Finding]:
        whole, partial = _holes_in(artifact, file, holes)
        unwritten = f"{holes.bytes:,} bytes in {len(holes.holes)}{'+' if holes.cut else ''} holes never written"
        if whole:
            noun = "tensor lies" if len(whole) == 1 else "tensors lie"
            entirely = "entirely" if all(overlap(list(holes.holes), i.offset, i.offset + i.nbytes) == i.nbytes
                                         for i in whole) else "mostly"
            yield self.finding(
                f"{file}: sparse: {len(whole)} {noun} {entirely} in holes of the file ({unwritten}: a pre-allocated or "
                f"interrupted copy), e.g. {example_names(whole, SHOWN)}; they read as zeros; expected written data",
                artifact=artifact.name, location=f"{file}:{whole[0].name}", observed=unwritten,
                expected="every tensor's bytes written", kind="sparse", tensors=[i.name for i in whole],
            )
        if partial:
            info, covered = partial[0]
            yield self.finding(
                f"{file}: sparse: {len(partial)} tensor(s) partly in holes of the file, e.g. {info.name}: {covered:,} of its "
                f"{info.nbytes:,} bytes never written (they read as zeros; a copy that stopped, or a filesystem that "
                f"stores zero runs as holes); expected written data",
                artifact=artifact.name, location=f"{file}:{info.name}", severity=Severity.WARNING,
                observed=f"{covered} bytes in holes", expected="every tensor's bytes written", kind="sparse",
                tensors=[i.name for i, _ in partial],
            )

    def run(self, artifact: Checkpoint, context: Context) -> Iterable[Finding]:
        for file, holes in sorted(artifact.holes.items()):
            yield from self._holes(artifact, file, holes)
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
    "unreadable": "a regular file within the size limits that its reader can parse",
}


def _holes_in(artifact: Checkpoint, file: str, holes: FileHoles) -> tuple[list, list]:
    """(tensors at least half in holes, (tensor, bytes in holes) less than half in them), zero-by-design left out."""
    from llava_doctor.schema import zero_by_design

    whole, partial = [], []
    spans = list(holes.holes)
    for info in artifact.iter_tensors():
        if info.file != file or info.offset is None or not info.nbytes or zero_by_design(info.name, len(info.shape)):
            continue
        covered = overlap(spans, info.offset, info.offset + info.nbytes)
        if 2 * covered >= info.nbytes:
            whole.append(info)
        elif covered:
            partial.append((info, covered))
    return whole, partial
