"""LD302 / LD303 and the base comparison: real scenario checkpoints on disk, and the comparison's edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llava_doctor.artifacts.checkpoint import Checkpoint, TensorInfo
from llava_doctor.checks._checkpoint_examples import checkpoint
from llava_doctor.compare import cached_comparison, compare_checkpoints, pairing_keys
from llava_doctor.registry import Context, all_checks


def run_check(code: str, trained, base, stage: str | None) -> list[str]:
    check = all_checks()[code]()
    return [f.message for f in check.run(trained, Context(deep=True, stage=stage, base=base))]


# --------------------------------------------------------------------------- the llm-not-frozen scenario


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    pytest.importorskip("torch")
    from llava_doctor import reproduce

    built = {}

    def get(fixed: bool):
        if fixed not in built:
            out = tmp_path_factory.mktemp("fixed" if fixed else "broken")
            built[fixed] = reproduce.build("llm-not-frozen", out, fixed=fixed)
        return built[fixed]

    return get


def audit_scenario(result, stage: str):
    from llava_doctor.api import audit

    out = result.out_dir
    return audit([out / "trained"], base=out / "base", stage=stage, deep=True, select=("LD302", "LD303"))


@pytest.mark.slow
def test_llm_trained_in_pretrain_is_ld302_on_language_model_and_lm_head(scenario):
    result = scenario(False)
    report = audit_scenario(result, "pretrain")
    by_component = {f.extra["component"]: f for f in report.by_code("LD302")}
    assert set(by_component) == {"language_model", "lm_head"}
    facts = result.facts
    for component, finding in by_component.items():
        changed = facts["changed_tensors"][component]
        assert f"{component}: {changed} of {changed} tensors differ" in finding.message
        assert finding.extra["max_abs_diff"] == pytest.approx(facts["max_abs_change"][component], rel=1e-6)
        assert "stage pretrain trains only the projector" in finding.message
    assert not report.by_code("LD303")  # the projector trained


@pytest.mark.slow
def test_frozen_twin_is_clean(scenario):
    report = audit_scenario(scenario(True), "pretrain")
    assert not report.by_code("LD302") and not report.by_code("LD303")


@pytest.mark.slow
def test_twin_audited_as_finetune_is_ld303_on_the_llm(scenario):
    report = audit_scenario(scenario(True), "finetune")
    assert {f.extra["component"] for f in report.by_code("LD303")} == {"language_model", "lm_head"}
    assert not report.by_code("LD302")  # the vision tower stayed frozen


@pytest.mark.slow
def test_without_base_nothing_is_compared_and_without_stage_nothing_is_judged(scenario):
    from llava_doctor.api import audit

    out = scenario(False).out_dir
    assert not audit([out / "trained"], deep=True, select=("LD302", "LD303"), stage="pretrain").findings
    report = audit([out / "trained"], select=("LD302", "LD303"), base=out / "base")  # --base implies --deep
    (finding,) = report.findings
    assert finding.code == "LD302" and str(finding.severity) == "info" and "no --stage given" in finding.message
    (stats,) = report.stats["comparisons"]
    assert stats["components"]["language_model"]["compared"] == stats["components"]["language_model"]["tensors"] > 0


# --------------------------------------------------------------------------- the comparison itself


def _bf16_bits(values) -> np.ndarray:
    """float32 -> bfloat16 raw bits (truncation is fine for exactly representable values)."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _bf16_checkpoint(values, name: str) -> Checkpoint:
    key = "model.layers.0.mlp.up_proj.weight"
    bits = _bf16_bits(values)
    info = TensorInfo(key, bits.shape, "BF16", "model.safetensors", "language_model")
    return Checkpoint(root="/nonexistent", name=name, format="safetensors", layout="llava-original",
                      tensors={key: info}, loader=lambda _info: bits)


def test_bf16_max_abs_diff_is_decoded_from_the_top_half_of_float32():
    base = _bf16_checkpoint([1.0, 2.0, -3.0, 0.5], "base")
    trained = _bf16_checkpoint([1.0, 2.5, -3.0, 0.75], "trained")
    (diff,) = compare_checkpoints(trained, base).tensors.values()
    assert diff.changed and diff.differing == 2 and diff.max_abs_diff == 0.5


def test_nan_on_one_side_counts_as_changed_with_undefined_delta():
    base = _bf16_checkpoint([1.0, 2.0], "base")
    trained = _bf16_checkpoint([1.0, float("nan")], "trained")
    (diff,) = compare_checkpoints(trained, base).tensors.values()
    assert diff.changed and math.isnan(diff.max_abs_diff)
    messages = run_check("LD302", trained, base, "pretrain")
    assert len(messages) == 1 and "max |Δ| NaN" in messages[0]


def _write(path, tensors: dict[str, np.ndarray]):
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    from llava_doctor.artifacts.readers import open_checkpoint

    return open_checkpoint(path)


def test_file_chunks_of_different_sizes_are_aligned(tmp_path):
    rng = np.random.default_rng(1)
    weights = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((37, 29)).astype(np.float16) for i in range(3)}
    weights["model.mm_projector.0.weight"] = rng.standard_normal((64, 48)).astype(np.float32)
    base = _write(tmp_path / "base", weights)
    changed = {k: v.copy() for k, v in weights.items()}
    changed["model.layers.2.mlp.up_proj.weight"][-1, -1] += np.float16(0.5)  # the very last element
    trained = _write(tmp_path / "trained", changed)
    for buffer_bytes in (64, 200, 1 << 20):  # chunks split tensors at many points
        result = compare_checkpoints(trained, base, buffer_bytes=buffer_bytes)
        assert not result.errors and not result.skipped
        assert {n for n, d in result.tensors.items() if d.changed} == {"model.layers.2.mlp.up_proj.weight"}
        diff = result.tensors["model.layers.2.mlp.up_proj.weight"]
        assert diff.differing == 1 and diff.max_abs_diff == pytest.approx(0.5, abs=2e-3)


def test_shape_mismatch_is_skipped_and_a_dtype_cast_is_unchanged(tmp_path):
    weights = {"model.layers.0.mlp.up_proj.weight": np.ones((4, 4), np.float32),
               "model.norm.weight": np.ones(4, np.float32)}
    base = _write(tmp_path / "base", weights)
    trained = _write(tmp_path / "trained", {"model.layers.0.mlp.up_proj.weight": np.ones((4, 4), np.float16),
                                            "model.norm.weight": np.ones(5, np.float32)})
    result = compare_checkpoints(trained, base)
    assert result.skipped == {"model.norm.weight": "shape [5] vs base [4]"}
    diff = result.tensors["model.layers.0.mlp.up_proj.weight"]
    assert not diff.changed and diff.tolerance is not None
    coverage = result.coverage()["language_model"]
    assert (coverage.tensors, coverage.compared, coverage.not_comparable) == (2, 1, 1)


def _cast_pair(tmp_path, base_dtype, trained_dtype, nudge: float = 0.0):
    """An fp32 'master' tensor saved as the base in one dtype and as the trained copy in another (optionally moved)."""
    import torch
    from safetensors.torch import save_file

    from llava_doctor.artifacts.readers import open_checkpoint

    master = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)) * 0.02
    for name, dtype, delta in (("base", base_dtype, 0.0), ("trained", trained_dtype, nudge)):
        (tmp_path / name).mkdir(parents=True)
        value = master.clone()
        value[0, :8] += delta
        save_file({"model.layers.0.mlp.up_proj.weight": value.to(dtype)}, str(tmp_path / name / "model.safetensors"))
    return open_checkpoint(tmp_path / "trained"), open_checkpoint(tmp_path / "base")


@pytest.mark.parametrize("base_dtype,trained_dtype", [
    ("float16", "bfloat16"), ("float16", "float32"), ("float32", "bfloat16"), ("bfloat16", "float16"),
])
def test_a_copy_in_another_dtype_is_unchanged_and_a_real_change_is_not(tmp_path, base_dtype, trained_dtype):
    """The common case: an fp16 base, a bf16 or fp32 fine-tune. Casting alone moves every value by up to half a
    unit of the narrower format; that is "unchanged". A change bigger than that rounding is seen."""
    import torch

    trained, base = _cast_pair(tmp_path / "same", getattr(torch, base_dtype), getattr(torch, trained_dtype))
    (diff,) = compare_checkpoints(trained, base).tensors.values()
    assert not diff.changed and diff.tolerance is not None, diff
    trained, base = _cast_pair(tmp_path / "moved", getattr(torch, base_dtype), getattr(torch, trained_dtype), 0.01)
    (diff,) = compare_checkpoints(trained, base).tensors.values()
    assert diff.changed and diff.differing == 8 and diff.max_abs_diff == pytest.approx(0.01, rel=0.05), diff


def test_truncated_base_is_an_error_not_a_traceback(tmp_path):
    weights = {"model.layers.0.mlp.up_proj.weight": np.ones((64, 64), np.float32)}
    base = _write(tmp_path / "base", weights)
    trained = _write(tmp_path / "trained", weights)
    path = tmp_path / "base" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    result = compare_checkpoints(trained, base)
    assert "model.layers.0.mlp.up_proj.weight" in result.errors and not result.tensors


def test_comparison_is_computed_once_per_pair():
    data = {"model.norm.weight": np.ones(4, np.float32)}
    trained = checkpoint({k: v.shape for k, v in data.items()}, data=data)
    base = checkpoint({k: v.shape for k, v in data.items()}, data=dict(data))
    first = cached_comparison(trained, base)
    assert cached_comparison(trained, base) is first
    other = checkpoint({k: v.shape for k, v in data.items()}, data=dict(data))
    assert cached_comparison(trained, other) is not first


def test_peft_base_layer_pairs_with_the_plain_weight():
    keys = {
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": (4, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (2, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (4, 2),
        "base_model.model.lm_head.weight": (8, 4),
    }
    paired = pairing_keys(checkpoint(keys))
    assert paired == {
        "language_model:layers.0.self_attn.q_proj.weight": "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "lm_head:weight": "base_model.model.lm_head.weight",
    }


def _lora_pair(with_adapters: bool):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((4, 4)).astype(np.float32)
    base_data = {"model.layers.0.self_attn.q_proj.weight": q, "model.norm.weight": np.ones(4, np.float32)}
    prefix = "base_model.model.model.layers.0.self_attn.q_proj."
    if with_adapters:  # a PEFT state dict whose frozen base_layer moved
        trained_data = {prefix + "base_layer.weight": q + 1, prefix + "lora_A.weight": np.ones((2, 4), np.float32),
                        prefix + "lora_B.weight": np.ones((4, 2), np.float32)}
    else:  # adapters merged into the weights
        trained_data = {"model.layers.0.self_attn.q_proj.weight": q + 1, "model.norm.weight": np.ones(4, np.float32)}
    build = lambda data: checkpoint({k: v.shape for k, v in data.items()}, data=data)  # noqa: E731
    return build(trained_data), build(base_data)


def test_lora_stage_reports_a_moved_base_layer_but_not_merged_weights():
    trained, base = _lora_pair(with_adapters=True)
    messages = run_check("LD302", trained, base, "lora")
    assert len(messages) == 1 and "language_model: 1 of 1" in messages[0] and "stage lora" in messages[0]
    trained, base = _lora_pair(with_adapters=False)
    assert run_check("LD302", trained, base, "lora") == []
