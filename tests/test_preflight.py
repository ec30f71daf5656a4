"""`llava-doctor preflight` end to end: LLaVA v1.5 and LLaVA-NeXT OneVision launch scripts (tests/data/preflight)
over a workdir the tests build - tiny model folders with real tokenizers, datasets with images, DeepSpeed
configs, projector adapters - with every known trap as a broken/fixed pair, and bad input."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llava_doctor.cli import main
from llava_doctor.findings import InputError, Severity
from llava_doctor.preflight.runner import preflight

DATA = Path(__file__).parent / "data" / "preflight"
NO_AUDIT = ("LD1",)  # trap variants that are not about the data skip the tokenization audit
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000}
QWEN2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 151936}
CLIP = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
          "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
NEXT_RUN = "llavanext-google_siglip-so400m-patch14-384-Qwen_Qwen2-7B-Instruct-mlp2x_gelu-pretrain_blip558k_plain"
ZERO3 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
                               "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                               "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                               "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True}}
ZERO2 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto",
         "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}}
# stand-ins for the lines of LLaVA-NeXT's train.py preflight reads, before and after commit bfbba5a
NEXT_TRAIN_PY = '''"""A stand-in for LLaVA-NeXT's llava/train/train.py: only the tunable-parts branch preflight reads."""


def unfreeze(model, model_args, training_args):
    tunable_parts = model_args.mm_tunable_parts.split(",")
    if "mm_language_model" in tunable_parts:
{body}
'''
BEFORE_FIX = '''        for name, param in model.named_parameters():
            if "vision_tower" not in name and "mm_projector" not in name:
                param.requires_grad_(True)'''
AFTER_FIX = '''        if training_args.lora_enable:
            pass  # LoRA mode: only the LoRA parameters train
        else:
            for name, param in model.named_parameters():
                if "vision_tower" not in name and "mm_projector" not in name:
                    param.requires_grad_(True)'''


def _json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def _model(root: Path, name: str, config: dict, tokenizer: Path | None) -> Path:
    folder = root / "models" / name
    _json(folder / "config.json", config)
    if tokenizer is not None:
        for file in tokenizer.iterdir():
            if file.is_file():
                (folder / file.name).symlink_to(file)
    return folder


def _adapter(path: Path, hidden: int, mm_hidden: int) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model.mm_projector.0.weight": torch.zeros(hidden, mm_hidden), "model.mm_projector.0.bias": torch.zeros(hidden),
                "model.mm_projector.2.weight": torch.zeros(hidden, hidden), "model.mm_projector.2.bias": torch.zeros(hidden)},
               path)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizers_dir):
    """A LLaVA-style working directory: models (mapped from hub ids), data with images, DeepSpeed configs, adapters."""
    from PIL import Image

    root = tmp_path_factory.mktemp("preflight-work")
    maps = {
        "lmsys/vicuna-13b-v1.5": _model(root, "vicuna", LLAMA, tokenizers_dir / "vicuna-7b-v1.5"),
        "Qwen/Qwen2-7B-Instruct": _model(root, "qwen2", QWEN2, tokenizers_dir / "Qwen2-7B-Instruct"),
        "liuhaotian/llava-v1.5-13b": _model(root, "llava-v1.5", {
            **LLAMA, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
            "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32},
            tokenizers_dir / "vicuna-7b-v1.5"),
        "openai/clip-vit-large-patch14-336": _model(root, "clip", CLIP, None),
        "google/siglip-so400m-patch14-384": _model(root, "siglip", SIGLIP, None),
    }
    coco = root / "playground/data/coco/train2017"
    blip = root / "playground/data/LLaVA-Pretrain/images/00000"
    coco.mkdir(parents=True)
    blip.mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (24, 16), (40 * k, 80, 120)).save(coco / f"{k:012d}.jpg")
        Image.new("RGB", (16, 16), (10, 40 * k, 200)).save(blip / f"{k:09d}.png")
    finetune = [{"id": f"ft{k}", "image": f"coco/train2017/{k:012d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": "A small coloured rectangle."},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "Mostly blue."}]} for k in range(4)]
    finetune.append({"id": "text0", "conversations": [{"from": "human", "value": "Say hello."},
                                                      {"from": "gpt", "value": "Hello."}]})
    _json(root / "playground/data/llava_v1_5_mix665k.json", finetune)
    _json(root / "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", [
        {"id": f"pt{k}", "image": f"00000/{k:09d}.png",
         "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a photo of a square"}]}
        for k in range(4)])
    (root / "playground/data/onevision_si.yaml").write_text(
        "datasets:\n  - json_path: ./playground/data/llava_v1_5_mix665k.json\n    sampling_strategy: all\n")
    _json(root / "scripts/zero3.json", ZERO3)
    _json(root / "scripts/zero2.json", ZERO2)
    _adapter(root / "checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin", 64, 32)
    _adapter(root / f"checkpoints/projectors/{NEXT_RUN}/mm_projector.bin", 64, 1152)
    return root, {k: str(v) for k, v in maps.items()}


def variant(work, script: str, *subs: tuple[str, str], name: str | None = None) -> Path:
    """A copy of a fixture script with regex substitutions (each must apply), written into the workdir."""
    root, _maps = work
    text = (DATA / script).read_text()
    for pattern, replacement in subs:
        assert re.search(pattern, text), pattern
        text = re.sub(pattern, replacement, text)
    path = root / (name or f"variant_{script}")
    path.write_text(text)
    return path


def run(work, source, **options):
    root, maps = work
    options.setdefault("maps", maps)
    return preflight(str(source) if isinstance(source, Path) else source, workdir=root, environ={"HOME": str(root)},
                     **options)


def codes(report, severity: Severity = Severity.WARNING) -> list[str]:
    return sorted(f.code for f in report.findings if f.severity >= severity)


# ------------------------------------------------------------------------------------------- the fixture scripts


SCRIPTS = ("pretrain.sh", "finetune.sh", "finetune_lora.sh", "finetune_task_lora.sh", "onevision_pretrain.sh",
           "onevision_finetune.sh")


@pytest.fixture(scope="module")
def clean_reports(work):
    # LD103 (the dataset-level template search) is left out: it retokenizes the data under every template
    return {script: run(work, DATA / script, ignore=("LD103",)) for script in SCRIPTS}


def transformers_major() -> int:
    from importlib import metadata

    return int(metadata.version("transformers").split(".")[0])


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_as_written_are_clean(clean_reports, script):
    report = clean_reports[script]
    found = codes(report)
    if script == "onevision_finetune.sh" and transformers_major() >= 5:
        # LLaVA-NeXT's preprocess_qwen reads tokenizer attributes transformers 5 removed: the audit predicts
        # that crash (LD101/LD103) - a finding about the installed transformers, not about this launch
        found = [c for c in found if not c.startswith("LD1")]
    assert found == [], [f.message for f in report.findings]
    stats = report.stats["preflight"]
    assert stats["tokenization_audit"] == "ran" and stats["data"]["samples"] in (4, 5)
    assert stats["codebase"] == ("llava-next" if script.startswith("onevision") else "llava")


def test_what_the_scripts_train(clean_reports):
    trains = {s: sorted(c for c, on in r.stats["preflight"]["trainable"].items() if on) for s, r in clean_reports.items()}
    assert trains["pretrain.sh"] == ["projector"] == trains["onevision_pretrain.sh"]
    assert trains["finetune.sh"] == ["language_model", "lm_head", "projector"]
    assert trains["finetune_lora.sh"] == ["lora", "projector"] == trains["finetune_task_lora.sh"]
    assert trains["onevision_finetune.sh"] == ["image_newline", "language_model", "lm_head", "projector", "vision_tower"]


# ------------------------------------------------------------------------------------------- traps, broken and fixed


@pytest.mark.slow
def test_template_of_another_family(work, clean_reports):
    """`--version v1` on a Qwen2 tokenizer (the `102 vs. 104` of haotian-liu/LLaVA#1166); qwen_1_5 fits it.
    And the other way round on LLaVA: a ChatML template on Vicuna's tokenizer; v1 fits it."""
    broken = run(work, variant(work, "onevision_finetune.sh", (r'PROMPT_VERSION="qwen_1_5"', 'PROMPT_VERSION="v1"')),
                 ignore=("LD103",))
    assert {"LD101", "LD903"} <= set(codes(broken))
    [ld903] = broken.by_code("LD903")
    assert "'</s>'" in ld903.message and "qwen_1_5" in ld903.message and ld903.extra["phase"] == "epoch"
    assert broken.stats["preflight"]["data"]["fraction_lost"] > 0
    assert clean_reports["onevision_finetune.sh"].by_code("LD903") == []
    chatml = run(work, variant(work, "finetune.sh", (r"--version v1", "--version chatml_direct")), ignore=("LD103",))
    assert {"LD101", "LD903"} <= set(codes(chatml))
    assert "'<|im_start|>'" in chatml.by_code("LD903")[0].message and "--version v1" in chatml.by_code("LD903")[0].message
    assert codes(clean_reports["finetune.sh"]) == []


def test_llm_not_frozen_in_pretraining(work):
    broken = run(work, variant(work, "pretrain.sh", (r"    --tune_mm_mlp_adapter True \\\n", "")), ignore=NO_AUDIT)
    assert codes(broken) == ["LD301", "LD301"]
    assert {f.extra["component"] for f in broken.findings} == {"language_model", "lm_head"}
    fixed = run(work, DATA / "pretrain.sh", ignore=NO_AUDIT)
    assert codes(fixed) == []


@pytest.mark.parametrize("checkout,expected", [(BEFORE_FIX, Severity.ERROR), (AFTER_FIX, None), (None, Severity.WARNING)])
def test_lora_with_tunable_parts(work, checkout, expected):
    """LLaVA-NeXT#508: LoRA + mm_tunable_parts with mm_language_model trained the whole LLM until bfbba5a."""
    root, _maps = work
    train_py = root / "llava" / "train" / "train.py"
    if checkout is not None:
        train_py.parent.mkdir(parents=True, exist_ok=True)
        train_py.write_text(NEXT_TRAIN_PY.format(body=checkout))
    try:
        report = run(work, variant(work, "onevision_finetune.sh", (r"--mm_vision_tower_lr=2e-6",
                                                                   "--mm_vision_tower_lr=2e-6 --lora_enable True")),
                     ignore=NO_AUDIT)
    finally:
        shutil.rmtree(root / "llava", ignore_errors=True)
    found = report.by_code("LD301")
    if expected is None:  # after the fix only the LoRA adapters train; image_newline (spatial_unpad) stays frozen
        assert [f.extra["component"] for f in found] == ["image_newline"]
        assert report.stats["preflight"]["trainable"]["lora"] and not report.stats["preflight"]["trainable"]["lm_head"]
        return
    assert sorted(f.extra["component"] for f in found) == ["language_model", "lm_head"]
    assert {f.severity for f in found} == {expected}
    assert ("before commit bfbba5a" in found[0].message) == (checkout is None)


def test_adapter_that_does_not_fit(work):
    root, _maps = work
    _adapter(root / "checkpoints/other/mm_projector.bin", 128, 32)
    broken = run(work, variant(work, "finetune.sh", (r"llava-v1.5-13b-pretrain/mm_projector.bin", "other/mm_projector.bin")),
                 ignore=NO_AUDIT)
    [finding] = broken.by_code("LD903")
    assert "copying a param with shape torch.Size([128, 32])" in finding.message
    assert "current model is torch.Size([64, 32])" in finding.message and finding.extra["phase"] == "launch"
    assert codes(run(work, DATA / "finetune.sh", ignore=NO_AUDIT)) == []


def test_local_siglip_path_on_llava_next(work):
    broken = run(work, variant(work, "onevision_finetune.sh", (r"--vision_tower \$\{VISION_MODEL_VERSION\}",
                                                               "--vision_tower ./models/siglip")), ignore=NO_AUDIT)
    [finding] = broken.by_code("LD903")
    assert "built as CLIPVisionTower" in finding.message and finding.extra["tower_class"] == "CLIPVisionTower"
    assert codes(run(work, DATA / "onevision_finetune.sh", ignore=NO_AUDIT)) == []


def test_zero3_without_the_gather_flag(work):
    root, _maps = work
    config = json.loads(json.dumps(ZERO3))
    del config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    _json(root / "scripts/zero3_nogather.json", config)
    broken = run(work, variant(work, "finetune.sh", (r"zero3\.json", "zero3_nogather.json")), ignore=NO_AUDIT)
    [finding] = broken.by_code("LD901")
    assert finding.severity is Severity.ERROR and finding.extra["phase"] == "save"
    lora = run(work, variant(work, "finetune_lora.sh", (r"zero3\.json", "zero3_nogather.json")), ignore=NO_AUDIT)
    assert [f.severity for f in lora.by_code("LD901")] == [Severity.WARNING]  # only the checkpoint-N folders
    assert codes(run(work, DATA / "finetune.sh", ignore=NO_AUDIT)) == []


def test_fp16_with_qwen2(work):
    broken = run(work, variant(work, "onevision_finetune.sh", (r"--bf16 True", "--fp16 True")), ignore=NO_AUDIT)
    [finding] = broken.by_code("LD902")
    assert "Qwen2" in finding.message and "--bf16 True" in finding.message
    assert codes(run(work, variant(work, "finetune.sh", (r"--bf16 True", "--fp16 True")), ignore=NO_AUDIT)) == []


@pytest.mark.parametrize("script,severity", [("finetune.sh", Severity.ERROR), ("onevision_finetune.sh", Severity.WARNING)])
def test_missing_images(work, script, severity):
    root, _maps = work
    records = json.loads((root / "playground/data/llava_v1_5_mix665k.json").read_text())
    records[1]["image"] = "coco/train2017/missing.jpg"
    _json(root / "playground/data/missing.json", records)
    (root / "playground/data/missing.yaml").write_text("datasets:\n  - json_path: ./playground/data/missing.json\n")
    data = "missing.yaml" if script.startswith("onevision") else "missing.json"
    broken = run(work, variant(work, script, (r"(llava_v1_5_mix665k\.json|onevision_si\.yaml)", data)), ignore=NO_AUDIT)
    [finding] = broken.by_code("LD903")
    assert finding.severity is severity and "sample ft1 -> coco/train2017/missing.jpg" in finding.message
    assert ("FileNotFoundError" in finding.message) == (severity is Severity.ERROR)


def test_adapter_into_a_partitioned_llava_checkpoint(work, clean_reports):
    """haotian-liu/LLaVA#1619: ZeRO-3 + --pretrain_mm_mlp_adapter on a LLaVA checkpoint."""
    broken = run(work, variant(work, "finetune_task_lora.sh", (r"--mm_projector_type", "--pretrain_mm_mlp_adapter "
                               "./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin --mm_projector_type")),
                 ignore=NO_AUDIT)
    [finding] = broken.by_code("LD901")
    assert "torch.Size([0])" in finding.message and "GatheredParameters" in finding.fix
    fixed = run(work, variant(work, "finetune_task_lora.sh", (r"zero3\.json", "zero2.json"), (r"--mm_projector_type",
                "--pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin --mm_projector_type")),
                ignore=NO_AUDIT)
    assert fixed.by_code("LD901") == []


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_flag_and_renamed_flag(work):
    report = run(work, variant(work, "finetune.sh", (r"--bf16 True", "--bf16 True --mm_projector_tipe linear")),
                 ignore=NO_AUDIT)
    [finding] = report.by_code("LD904")
    assert "--mm_projector_tipe linear" in finding.message and "did you mean --mm_projector_type" in finding.message
    prefix = run(work, variant(work, "finetune.sh", (r"--bf16 True", "--bf16 True --mm_projector_typ linear")),
                 ignore=NO_AUDIT)
    assert prefix.by_code("LD904") == []  # argparse takes a unique prefix, as HfArgumentParser does
    next_flag = run(work, variant(work, "finetune.sh", (r"--bf16 True", "--bf16 True --unfreeze_mm_vision_tower True")),
                    ignore=NO_AUDIT, codebase="llava")
    assert "is a LLaVA-NeXT flag" in next_flag.by_code("LD904")[0].message
    from llava_doctor.preflight.arguments import installed_hf_arguments

    renamed = run(work, variant(work, "finetune.sh", (r"--bf16 True", '--bf16 True --evaluation_strategy "no"')),
                  ignore=NO_AUDIT)
    if "evaluation_strategy" in {s.name for s in installed_hf_arguments().fields}:
        assert renamed.by_code("LD904") == []  # transformers < 4.46 (LLaVA's pin) still takes it
    else:
        assert "use --eval_strategy" in renamed.by_code("LD904")[0].message


def test_unresolvable_hub_id_says_what_was_not_checked(work):
    root, maps = work
    report = run(work, DATA / "finetune.sh", maps={k: v for k, v in maps.items() if k != "lmsys/vicuna-13b-v1.5"})
    [finding] = report.by_code("LD903")
    assert finding.severity is Severity.WARNING and "lmsys/vicuna-13b-v1.5" in finding.message
    assert "the tokenization audit (LD101-LD105)" in finding.extra["not_checked"]
    assert report.stats["preflight"]["tokenization_audit"].startswith("not run")


def test_deepspeed_file_that_is_not_json(work):
    root, _maps = work
    (root / "scripts/broken.json").write_text('{"zero_optimization": {"stage": 3,}')
    report = run(work, variant(work, "finetune.sh", (r"zero3\.json", "broken.json")), ignore=NO_AUDIT)
    [finding] = report.by_code("LD901")
    assert "not valid JSON" in finding.message and finding.extra["phase"] == "launch"


def test_script_is_never_executed(work, tmp_path):
    root, _maps = work
    sentinel = tmp_path / "SENTINEL"
    script = tmp_path / "run.sh"
    script.write_text(f"touch {sentinel}\nX=$(touch {sentinel}.sub)\necho `touch {sentinel}.bq` > {sentinel}.redir\n"
                      + (DATA / "pretrain.sh").read_text().replace("deepspeed", f"touch {sentinel}.launch; deepspeed", 1))
    report = run(work, script, ignore=NO_AUDIT)
    assert report.stats["preflight"]["launcher"] == "deepspeed"
    assert list(tmp_path.iterdir()) == [script]


def test_not_a_launch_script_is_one_line(tmp_path):
    script = tmp_path / "notes.sh"
    script.write_text("set -e\necho 'training starts'\nnvidia-smi\n")
    result = CliRunner().invoke(main, ["preflight", str(script)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no training launch found" in result.output
    with pytest.raises(InputError, match="not a launch command"):
        preflight(["ls", "-la"])


# ------------------------------------------------------------------------------------------- inputs and outputs


def test_command_after_double_dash_and_the_report_formats(work):
    root, maps = work
    command = ["deepspeed", "llava/train/train_mem.py", "--deepspeed", "./scripts/zero2.json", "--model_name_or_path",
               "lmsys/vicuna-13b-v1.5", "--version", "plain", "--data_path",
               "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "--image_folder",
               "./playground/data/LLaVA-Pretrain/images", "--vision_tower", "openai/clip-vit-large-patch14-336",
               "--mm_projector_type", "mlp2x_gelu", "--bf16", "True", "--fp16", "True", "--output_dir", "out",
               "--mm_vision_select_layer", "-9"]
    options = ["--workdir", str(root), "--ignore", "LD1"] + [a for k, v in maps.items() for a in ("--map", f"{k}={v}")]
    result = CliRunner().invoke(main, ["preflight", *options, "--format", "json", "--", *command])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    findings = {f["code"]: f for f in document["findings"]}
    assert {"LD301", "LD902", "LD903"} <= set(findings)
    assert findings["LD902"]["phase"] == "launch" and findings["LD903"]["phase"] == "step 1"
    assert findings["LD301"]["phase"] == "epoch" and findings["LD902"]["phase_rank"] < findings["LD903"]["phase_rank"]
    for fmt, marker in (("sarif", '"version": "2.1.0"'), ("junit", "<testsuite")):
        rendered = CliRunner().invoke(main, ["preflight", *options, "--format", fmt, "--", *command])
        assert rendered.exit_code == 1 and marker in rendered.output
    text = CliRunner().invoke(main, ["preflight", *options, "--", *command])
    assert "trains: projector, language_model, lm_head" in text.output


def test_arguments_file_and_hf_cache_from_the_script(work, tmp_path):
    root, maps = work
    cache = tmp_path / "hf" / "hub" / "models--lmsys--vicuna-13b-v1.5"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("b" * 40)
    shutil.copytree(maps["lmsys/vicuna-13b-v1.5"], cache / "snapshots" / ("b" * 40), symlinks=True)
    script = tmp_path / "cached.sh"
    script.write_text(f"export HF_HOME={tmp_path / 'hf'}\n" + (DATA / "finetune.sh").read_text())
    report = run(work, script, maps={k: v for k, v in maps.items() if k != "lmsys/vicuna-13b-v1.5"}, ignore=NO_AUDIT)
    assert codes(report) == []
    assert "HF cache" in report.stats["preflight"]["references"]["model_name_or_path"]["how"]
    toml = tmp_path / "args.toml"
    toml.write_text('model_name_or_path = "lmsys/vicuna-13b-v1.5"\nversion = "plain"\ntune_mm_mlp_adapter = true\n'
                    'vision_tower = "openai/clip-vit-large-patch14-336"\nmm_projector_type = "mlp2x_gelu"\n'
                    'data_path = "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"\n'
                    'image_folder = "./playground/data/LLaVA-Pretrain/images"\nbf16 = true\noutput_dir = "out"\n'
                    'model_max_length = 2048\nmm_vision_select_layr = -2\n')
    report = run(work, toml, ignore=NO_AUDIT)
    assert [f.code for f in report.findings] == ["LD904"] and "mm_vision_select_layr" in report.findings[0].message
    yaml = tmp_path / "args.yaml"
    yaml.write_text("model_name_or_path: Qwen/Qwen2-7B-Instruct\nversion: qwen_1_5\nfp16: true\noutput_dir: out\n"
                    "data_path: ./playground/data/llava_v1_5_mix665k.json\nimage_folder: ./playground/data\n")
    report = run(work, yaml, ignore=NO_AUDIT, codebase="llava-next")
    assert [f.code for f in report.findings] == ["LD902"]


# ------------------------------------------------------------------------------------------- --smoke


def _train_briefly(model, tokenizer, texts, steps: int = 40) -> None:
    """A few steps on the fixture's own texts: the stand-in for a pretrained LLM (its loss well below ln V)."""
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def weights(work, tokenizers_dir):
    """Real (tiny) weights for finetune.sh's models: a random and a briefly trained Llama with Vicuna's
    tokenizer, a CLIP tower; mapped from the script's hub ids."""
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlamaForCausalLM

    from llava_doctor.core.vision import build_base_vision_tower

    root, maps = work
    tower = build_base_vision_tower(root / "weights" / "clip", CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / "vicuna-7b-v1.5"))
    tokenizer.pad_token = tokenizer.unk_token
    records = json.loads((root / "playground/data/llava_v1_5_mix665k.json").read_text())
    texts = [" ".join(turn["value"].replace("<image>", "") for turn in r["conversations"]) for r in records]
    folders = {}
    for name, steps in (("random", 0), ("trained", 40)):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False))
        if steps:
            _train_briefly(model, tokenizer, texts, steps)
        folder = root / "weights" / name
        model.save_pretrained(folder)
        for file in (tokenizers_dir / "vicuna-7b-v1.5").iterdir():
            (folder / file.name).symlink_to(file)
        folders[name] = str(folder)
    return {"tower": str(tower), **folders}


def _smoke(work, weights, llm: str, *extra: str):
    root, maps = work
    mapped = {**maps, "lmsys/vicuna-13b-v1.5": weights[llm], "openai/clip-vit-large-patch14-336": weights["tower"]}
    options = ["--workdir", str(root), "--ignore", "LD1"] + [a for k, v in mapped.items() for a in ("--map", f"{k}={v}")]
    return CliRunner().invoke(main, ["preflight", *options, "--smoke", "--format", "json", *extra, str(DATA / "finetune.sh")])


@pytest.mark.slow
def test_smoke_step_on_a_real_model(work, weights):
    """--smoke builds finetune.sh's model (Llama + CLIP + the adapter), runs one real batch forward/backward and
    the live checks: a random LLM starts at ln(V) (LD405 at step 1); a pretrained one does not."""
    random = _smoke(work, weights, "random")
    assert random.exit_code == 1, random.output
    document = json.loads(random.stdout)
    [ld405] = [f for f in document["findings"] if f["code"] == "LD405"]
    assert ld405["phase"] == "step 1" and ld405["artifact"].endswith("(--smoke)")
    trained = _smoke(work, weights, "trained")
    assert trained.exit_code == 0, trained.output
    assert [f["code"] for f in json.loads(trained.stdout)["findings"]] == []


def test_smoke_without_weights_is_not_a_pass(work):
    root, maps = work
    options = ["--workdir", str(root), "--ignore", "LD1"] + [a for k, v in maps.items() for a in ("--map", f"{k}={v}")]
    result = CliRunner().invoke(main, ["preflight", *options, "--smoke", "--format", "json", str(DATA / "finetune.sh")])
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)["errors"]
    assert "smoke step not run: the weights of --model_name_or_path lmsys/vicuna-13b-v1.5" in error["message"]


def test_undecodable_images_and_bounded_sampling(work):
    root, _maps = work
    (root / "playground/data/coco/train2017/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records = json.loads((root / "playground/data/llava_v1_5_mix665k.json").read_text())
    records[2]["image"] = "coco/train2017/corrupt.jpg"
    _json(root / "playground/data/corrupt.json", records)
    script = variant(work, "finetune.sh", (r"llava_v1_5_mix665k\.json", "corrupt.json"))
    [finding] = run(work, script, ignore=NO_AUDIT).by_code("LD903")
    assert "cannot be decoded" in finding.message and "sample ft2 -> coco/train2017/corrupt.jpg" in finding.message
    sampled = run(work, script, ignore=NO_AUDIT, max_images=2, decode_images=0)
    assert sampled.by_code("LD903") == []  # the corrupt image was not among those checked ...
    assert sampled.stats["preflight"]["data"]["images"] == {  # ... and the report says how many were
        "references": 4, "checked": 2, "missing": 0, "estimated_missing": 0, "decoded": 0, "undecodable": 0,
        "videos_not_checked": 0}


def test_a_script_with_two_launches(work, tmp_path):
    both = tmp_path / "both.sh"
    both.write_text((DATA / "pretrain.sh").read_text() + "\n" + (DATA / "finetune.sh").read_text())
    first = run(work, both, ignore=NO_AUDIT)
    assert first.stats["preflight"]["stage"] == "pretrain"
    assert "2 training launches" in first.stats["preflight"]["notes"][0]
    second = run(work, both, ignore=NO_AUDIT, launch=2)
    assert second.stats["preflight"]["stage"] == "finetune" and second.stats["preflight"]["line"] > 30
