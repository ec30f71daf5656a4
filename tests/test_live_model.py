"""The LiveModel artifact: every family and wrapper, the per-parameter facts, the statistics, and bad input."""
from __future__ import annotations

import math

import pytest
import torch

import llava_doctor
from llava_doctor.artifacts.live import component_table, format_component_table, inspect_model, optimizer_groups
from llava_doctor.artifacts.live_stats import Moments, moment_statistics, value_statistics
from _live_models import core_llava
from llava_doctor.checks._live_examples import freeze, hf_llava, lora
from llava_doctor.core.builder import transformers_major
from llava_doctor.findings import InputError
from llava_doctor.layout import component_of, detect_layout, live_key
from tests._transformers import needs


def snapshot(model):
    """Everything inspection must leave as it was: values (bit for bit), grads, requires_grad, devices, ZeRO state."""
    state = {}
    for name, param in model.named_parameters():
        data = param.ds_tensor if hasattr(param, "ds_tensor") else param
        state[name] = (data.detach().clone(), None if param.grad is None else param.grad.clone(), param.requires_grad,
                       str(data.device), tuple(param.shape), str(getattr(param, "ds_status", "")))
    return state


def assert_unchanged(before, after):
    assert before.keys() == after.keys()
    for name, (data, grad, requires_grad, device, shape, status) in before.items():
        now = after[name]
        assert torch.equal(data.view(torch.uint8) if data.numel() else data, now[0].view(torch.uint8) if now[0].numel() else now[0]), name
        assert (grad is None) == (now[1] is None) and (grad is None or torch.equal(grad, now[1])), name
        assert (requires_grad, device, shape, status) == now[2:], name


# in memory transformers 5 keeps the parts under `model.`; 4.x at the top, named as it saves them
HF_MEMORY_LAYOUT = "hf-llava-memory" if transformers_major() >= 5 else "hf-llava-4x"


@pytest.mark.parametrize("family,expected", [
    ("llava", {"vision_tower": 39, "projector": 4, "language_model": 20, "lm_head": 1}),
    pytest.param("llava_next", {"vision_tower": 39, "projector": 4, "image_newline": 1, "language_model": 20, "lm_head": 1},
                 marks=needs("LlavaNextConfig")),
    pytest.param("llava_onevision", {"vision_tower": 48, "projector": 4, "image_newline": 1, "language_model": 26,
                                     "lm_head": 1}, marks=needs("LlavaOnevisionConfig")),
])
def test_transformers_families_map_every_parameter_through_the_layout(family, expected):
    model = hf_llava(family=family)
    live = inspect_model(model)
    assert live.family == {"llava": "hf-llava", "llava_next": "hf-llava-next", "llava_onevision": "hf-llava-onevision"}[family]
    assert live.layout == HF_MEMORY_LAYOUT
    table = {row["component"]: row for row in component_table(live)}
    assert {c: row["tensors"] for c, row in table.items()} == expected
    assert sum(row["total"] for row in table.values()) == sum(p.numel() for p in model.parameters())
    assert live.tower.present and live.tower.loaded is None and live.stage is None  # no flags: stage unknown
    assert live.config["model_type"] == family


def test_original_llava_tree_reports_the_tower_wrapper_and_infers_the_stage():
    delayed = inspect_model(core_llava(delay_load=True, load=False, tune_mm_mlp_adapter=True))
    assert delayed.family == "llava-original" and delayed.layout == "llava-original"
    assert delayed.tower.loaded is False and delayed.tower.delay_load is True and delayed.tower.wrapper == "VisionTower"
    assert "vision_tower" not in delayed.components_present()
    assert (delayed.stage, delayed.stage_reason) == ("pretrain", "inferred: tune_mm_mlp_adapter is set")
    loaded = inspect_model(core_llava(), stage="finetune")
    assert loaded.tower.loaded is True and loaded.tower.model_class == "CLIPVisionModel"
    assert loaded.tower.reference and loaded.stage_reason == "given"
    assert {p.component for p in loaded.parameters} == {"vision_tower", "projector", "language_model", "lm_head"}
    assert all(not p.requires_grad for p in loaded.parameters if p.component == "vision_tower")  # load_model froze it


def test_xtuner_model_with_and_without_lora(tmp_path):
    from peft import LoraConfig

    from _live_models import tower_folder
    from llava_doctor.core.xtuner import build_tiny_xtuner

    pretrain = inspect_model(build_tiny_xtuner(tower_folder(), freeze_llm=True))
    assert (pretrain.family, pretrain.layout, pretrain.stage) == ("xtuner", "xtuner", "pretrain")
    table = {row["component"]: (row["trainable"], row["total"]) for row in component_table(pretrain)}
    assert table["projector"][0] == table["projector"][1] > 0 and table["language_model"][0] == 0
    lora_model = build_tiny_xtuner(tower_folder(), freeze_llm=True, llm_lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    live = inspect_model(lora_model)
    assert live.stage == "lora" and live.lora_present
    lora_names = [p for p in live.parameters if p.component == "lora"]
    assert lora_names and all(p.name.startswith("llm.base_model.model.") and p.key.startswith("llm.model.") for p in lora_names)
    assert all(p.component == "language_model" for p in live.parameters if ".base_layer." in p.name)


def test_peft_ddp_and_trainer_wrappers_are_seen_through(cpu_dist, tmp_path):
    from torch.nn.parallel import DistributedDataParallel
    from transformers import Trainer, TrainingArguments

    peft = freeze(lora(hf_llava()), "lora_", "multi_modal_projector")
    live = inspect_model(peft)
    assert live.wrappers == ("PeftModelForCausalLM",) or live.wrappers[0].startswith("Peft")
    assert live.stage == "lora" and {"lora", "projector"} <= {p.component for p in live.parameters if p.requires_grad}
    assert live.layout == HF_MEMORY_LAYOUT and all(not p.key.startswith("base_model.") for p in live.parameters)
    ddp = inspect_model(DistributedDataParallel(hf_llava()))
    assert ddp.wrappers == ("DistributedDataParallel",) and ddp.family == "hf-llava"
    model = freeze(hf_llava(), "multi_modal_projector")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer()
    report = llava_doctor.inspect(trainer, stage="pretrain", select=["LD301", "LD303"])
    assert report.stats["live"]["wrappers"] == ["Trainer"] and report.stats["live"]["optimizer"]["source"] == "param_groups"
    assert report.findings == []


def test_statistics_match_torch_on_the_tensors_own_dtype():
    torch.manual_seed(0)
    tensors = [torch.randn(300, 7), torch.randn(50).bfloat16(), torch.zeros(4, 4), torch.full((9,), 2.5, dtype=torch.float16)]
    broken = torch.randn(100)
    broken[[3, 50]] = float("nan")
    broken[7] = float("inf")
    stats = value_statistics([torch.nn.Parameter(t, requires_grad=False) for t in tensors + [broken]])
    for tensor, result in zip(tensors, stats):
        reference = tensor.double()
        assert result.count == tensor.numel() and result.finite
        assert result.mean == pytest.approx(reference.mean().item(), abs=1e-5)
        assert result.std == pytest.approx(reference.std(unbiased=False).item(), rel=1e-3, abs=1e-6)
        assert (result.min, result.max) == (reference.min().item(), reference.max().item())
    assert stats[2].all_zero and stats[3].constant and not stats[0].constant
    last = stats[4]
    finite = broken[torch.isfinite(broken)].double()
    assert (last.nan, last.inf, last.finite) == (2, 1, False)
    assert last.mean == pytest.approx(finite.mean().item(), abs=1e-6) and last.max == finite.max().item()


def test_moments_tell_a_uniform_from_a_normal():
    torch.manual_seed(0)
    uniform, normal = torch.empty(256, 256).uniform_(-0.1, 0.1), torch.randn(256, 256) * 0.02
    found = moment_statistics([torch.nn.Parameter(uniform), torch.nn.Parameter(normal)])
    assert all(isinstance(m, Moments) for m in found)
    assert found[0].kurtosis == pytest.approx(1.8, abs=0.03) and found[0].max_abs <= 0.1
    assert found[0].std == pytest.approx(0.1 / math.sqrt(3), rel=0.01)
    assert found[1].kurtosis == pytest.approx(3.0, abs=0.1) and found[1].std == pytest.approx(0.02, rel=0.02)


def test_inspection_never_changes_the_model():
    model = lora(hf_llava())
    ids = torch.randint(0, 100, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    report = llava_doctor.inspect(model, stage="finetune", tokenizer=list(range(120)),
                                  optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    assert report.findings  # a fresh model has plenty to say (LD304/LD305, LD301 for finetune with LoRA)
    assert_unchanged(before, snapshot(model))
    assert torch.equal(rng, torch.random.get_rng_state())


def test_component_table_reads_like_a_trainable_summary():
    live = inspect_model(freeze(hf_llava(), "multi_modal_projector"))
    lines = format_component_table(component_table(live))
    assert lines[0].split()[:3] == ["component", "trainable", "total"]
    projector = next(line for line in lines if line.startswith("projector"))
    assert "2,112" in projector and "100.0%" in projector and "float32 / cpu" in projector
    assert next(line for line in lines if line.startswith("language_model")).split()[1] == "0"


def test_live_keys_map_through_the_checkpoint_component_map():
    # 4.x in-memory names (transformers < 4.52), 5.x names, PEFT levels and XTuner's: one map
    names = ["vision_tower.vision_model.embeddings.patch_embedding.weight", "multi_modal_projector.linear_1.weight",
             "language_model.model.layers.0.self_attn.q_proj.weight", "language_model.lm_head.weight"]
    layout = detect_layout(names)
    assert layout == "hf-llava-4x"
    assert [component_of(n, layout) for n in names] == ["vision_tower", "projector", "language_model", "lm_head"]
    assert live_key("base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.language_model.layers.0.self_attn.q_proj.weight"
    assert live_key("base_model.model.model.multi_modal_projector.modules_to_save.default.linear_1.weight") == \
        "model.multi_modal_projector.linear_1.weight"
    assert live_key("llm.base_model.model.model.norm.weight") == "llm.model.norm.weight"
    assert live_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight").endswith("lora_A.default.weight")


# ----------------------------------------------------------------------------- bad input


def test_a_module_that_is_not_llava_gets_one_line_naming_what_was_found():
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(InputError) as error:
        llava_doctor.inspect(llm)
    message = str(error.value)
    assert "\n" not in message and "LlamaForCausalLM is not a LLaVA-family model" in message
    assert "found language_model (11 tensors), lm_head (1 tensors)" in message
    assert "not found: vision_tower, projector" in message
    with pytest.raises(InputError, match="Linear is not a LLaVA-family model: found no LLaVA component; 2 tensors outside"):
        llava_doctor.inspect(torch.nn.Linear(3, 3))


def test_an_empty_model_or_not_a_module_is_an_input_error():
    with pytest.raises(InputError, match="Module has no parameters"):
        llava_doctor.inspect(torch.nn.Module())
    with pytest.raises(InputError, match="a dict is not a torch module"):
        llava_doctor.inspect({"weight": torch.zeros(1)})
    with pytest.raises(InputError, match="got None"):
        llava_doctor.inspect(None)


def test_a_model_on_meta_gets_its_shapes_checked_and_its_values_reported_unread():
    with torch.device("meta"):
        model = freeze(hf_llava(), "multi_modal_projector", "language_model", "lm_head")
    report = llava_doctor.inspect(model, stage="finetune", tokenizer=list(range(200)))
    infos = [f for f in report.findings if f.code == "LD204"]
    assert len(infos) == 1 and infos[0].severity == llava_doctor.Severity.INFO
    assert "values not checked for 64 of 64 parameters: on the meta device" in infos[0].message
    assert [f.code for f in report.findings if f.severity > llava_doctor.Severity.INFO] == ["LD203"]  # tokenizer > rows


def test_an_optimizer_or_tokenizer_that_is_not_one_is_one_line_and_the_rest_still_runs():
    model = freeze(hf_llava(), "multi_modal_projector")
    report = llava_doctor.inspect(model, stage="pretrain", optimizer="adamw", tokenizer=object())
    assert report.input_errors == [
        ("optimizer", "optimizer: a str is not an optimizer (no param_groups holding parameters)"),
        ("tokenizer", "tokenizer: a object has no length (len(tokenizer))"),
    ]
    assert report.exit_code(llava_doctor.Severity.ERROR) == 2 and "LD304" in report.codes()
    with pytest.raises(InputError):
        optimizer_groups(torch.nn.Linear(2, 2))


def test_deepspeed_style_optimizer_groups_are_the_models_own_parameters():
    model = torch.nn.Linear(2, 2)

    class ZeroLike:  # the attributes DeepSpeed's ZeRO optimizers expose
        def __init__(self):
            self.fp16_groups = [[model.weight]]
            self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    groups = optimizer_groups(ZeroLike())
    assert groups.source == "fp16_groups" and groups.members == frozenset({id(model.weight)}) and groups.groups == ((1, 0.5),)
