"""LD406: the training log was read only in part: a file cut off or corrupt mid-way, or beyond the reader's bounds."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.training_log import MAX_LOG_ENTRIES, LogCut, LogStep, TrainingLog
from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example


def _log(*cuts: LogCut):
    def build():
        steps = tuple(LogStep(index=i, step=10 * (i + 1), loss=2.0 - i / 10, grad_norm=1.0) for i in range(4))
        return TrainingLog(name="trainer_state.json", steps=steps, source="trainer_state", cuts=cuts)

    return build


TRUNCATED = LogCut("truncated", "the end of the file (byte 4,096, line 160) inside log_history",
                   "4 log_history entries (steps 10..40)")
CORRUPT = LogCut("corrupt", "line 33, column 18 (Expecting ',' delimiter)", "2 log_history entries (steps 10..20)")
LONG = LogCut("long_lines", "line 7", "the first 1,048,576 bytes of each line longer than that")


class LogCutShort(Check):
    code = "LD406"
    title = "training log cut short: only part of it could be read"
    artifact = "TrainingLog"
    severity = Severity.ERROR
    rationale = """
    The HF Trainer rewrites trainer_state.json at every save with a plain `open(path, "w")` and
    `write`, not atomically, so a job killed while saving (preemption, an out-of-memory kill, a
    full disk) leaves it cut off mid-entry; `--resume_from_checkpoint` then fails in
    `TrainerState.load_from_json` with `json.decoder.JSONDecodeError`, and the checkpoint beside it
    was likely interrupted too. Reading only the entries before the cut and reporting them as a
    clean run would hide both, so the reader salvages what it can, says how many entries it read
    and where the file ends or stops being JSON, and this check reports it. The reader also stops
    keeping entries after the first million, and cuts lines longer than 1 MiB (a log without
    newlines, a device or sparse file in disguise); what it skipped is reported as a warning.
    """
    fix = """
    Treat the checkpoint beside a cut trainer_state.json as incomplete: resume from the previous
    checkpoint-N (its trainer_state.json and weights are whole) and check the disk space and the
    job's end; keep text logs line-oriented.
    """
    valid = (Example("a complete log", _log()),)
    invalid = (
        Example("trainer_state.json cut off mid-entry", _log(TRUNCATED), count=1,
                contains=("cut off at the end of the file (byte 4,096, line 160)",
                          "read only 4 log_history entries (steps 10..40)")),
        Example("invalid JSON mid-file", _log(CORRUPT), count=1,
                contains=("stops being valid JSON at line 33, column 18",)),
        Example("over-long lines", _log(LONG), count=1, contains=("lines longer than",)),
    )

    def run(self, artifact: TrainingLog, context: Context) -> Iterable[Finding]:
        for cut in artifact.cuts:
            if cut.kind == "truncated":
                message = (f"log cut off at {cut.where}: read only {cut.read}; the rest of the run's history is "
                           "missing (an interrupted save); expected a complete JSON document")
            elif cut.kind == "corrupt":
                message = (f"log stops being valid JSON at {cut.where}: read only {cut.read} before it; "
                           "expected a well-formed JSON document")
            elif cut.kind == "capped":
                message = (f"more than {MAX_LOG_ENTRIES:,} log entries: read {cut.read}; expected at most "
                           f"{MAX_LOG_ENTRIES:,}")
            else:
                message = f"lines longer than the reader's limit from {cut.where}: read {cut.read}"
            severity = Severity.ERROR if cut.kind in ("truncated", "corrupt") else Severity.WARNING
            yield self.finding(message, artifact=artifact.name, location=cut.where.split(" (")[0], severity=severity,
                               cut=cut.kind, read=cut.read)
