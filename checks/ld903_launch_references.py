"""LD903: a reference in the launch that does not resolve or does not fit (model, tower, adapter, template, data, images)."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.artifacts.launch import Launch, Reference
from llava_doctor.findings import Finding, Severity
from llava_doctor.preflight.images import ImageCheck
from llava_doctor.preflight.models import (NEXT_SIGLIP_HIDDEN, adapter_state, is_llava_checkpoint, known_projector_type,
                                           llm_hidden_size, load_state_dict_errors, projector_shapes,
                                           select_layer_range, tower_class, tower_facts, tower_width)
from llava_doctor.registry import Check, Context, Example

from ._launch_examples import (FINETUNE, ONEVISION, PRETRAIN, QWEN2_7B, QWEN_SPECIALS, SIGLIP_SO400M,
                               launch, projector_file)

NEXT = dict(codebase="llava-next", model=QWEN2_7B, tower=SIGLIP_SO400M, specials=QWEN_SPECIALS)
# the tokens a template's turns end with: a tokenizer without them as single tokens drifts every round
TEMPLATE_TOKENS = {"two": ("</s>",), "llama_2": ("</s>",), "mpt": ("<|im_start|>", "<|im_end|>"),
                   "chatml": ("<|im_start|>", "<|im_end|>"), "llama_3": ("<|start_header_id|>", "<|eot_id|>"),
                   "gemma": ("<start_of_turn>", "<end_of_turn>")}
FAMILY_TEMPLATES = (("<|im_end|>", {"llava": "chatml_direct", "llava-next": "qwen_1_5"}),
                    ("<|eot_id|>", {"llava": "llava_llama_3 (LLaVA-NeXT only)", "llava-next": "llava_llama_3"}),
                    ("<end_of_turn>", {"llava": "gemma_instruct (LLaVA-NeXT only)", "llava-next": "gemma_instruct"}),
                    ("</s>", {"llava": "v1", "llava-next": "v1"}))
CLIP_CLASSES = ("CLIPVisionTower", "CLIPVisionTowerS2", "HFVisionTower")


def _not_checked(launch_: Launch, flag: str) -> list[str]:
    """What preflight cannot check without the folder behind `flag`."""
    out = []
    if flag == "model_name_or_path":
        if launch_.arg("data_path"):
            out.append("the tokenization audit (LD101-LD105)")
        out.append("--version against the tokenizer")
        if launch_.arg("pretrain_mm_mlp_adapter"):
            out.append("the adapter's shapes")
        if launch_.arg("fp16", False):
            out.append("the LLM family's float16 risk (LD902)")
        if launch_.deepspeed is not None:
            out.append("ZeRO-3 load order (LD901)")
    else:
        out += ["the tower class against the folder", "--mm_vision_select_layer against its depth"]
        if launch_.arg("pretrain_mm_mlp_adapter"):
            out.append("the adapter's input width")
    return out


def _suggest_template(specials: frozenset[str], codebase: str) -> str | None:
    for token, names in FAMILY_TEMPLATES:
        if token in specials:
            return names[codebase]
    return None


def _first(refs: list) -> str:
    """`first: sample ID -> FILE (why)` for a list of ImageRef or (ImageRef, why)."""
    ref = refs[0][0] if isinstance(refs[0], tuple) else refs[0]
    extra = f" ({refs[0][1]})" if isinstance(refs[0], tuple) else ""
    return f"first: sample {ref.sample} -> {ref.file}{extra}"


class LaunchReferences(Check):
    code = "LD903"
    title = "a reference in the launch does not resolve or does not fit"
    artifact = "Launch"
    severity = Severity.ERROR
    rationale = """
    A launch names folders and files the training code opens one after the other, each failure a
    crash at a different time. At launch: `--model_name_or_path` / `--vision_tower` that do not exist;
    a tower the builder does not know (`ValueError: Unknown vision tower`; original LLaVA knows only
    CLIP) or maps to the wrong class - LLaVA-NeXT's build_vision_tower tests `os.path.exists` before
    `"siglip" in name`, so a local SigLIP folder is built as CLIPVisionTower (`You are using a model
    of type siglip to instantiate a model of type clip_vision_model`, `size mismatch for
    vision_model.embeddings.patch_embedding.weight: copying a param with shape torch.Size([1152, 3, 14,
    14]) from checkpoint, the shape in current model is torch.Size([768, 3, 32, 32])`,
    LLaVA-VL/LLaVA-NeXT#303, #148, #186); a `--pretrain_mm_mlp_adapter` whose tensors do not fit
    `--mm_projector_type` between the tower's and the LLM's widths (`size mismatch for 0.weight`,
    haotian-liu/LLaVA#1161, LLaVA-VL/LLaVA-NeXT#177) or whose pickle needs code. At step 1: a
    `--mm_vision_select_layer` beyond the tower's depth (`IndexError: tuple index out of range`), or
    LLaVA-NeXT's SigLipVisionTower, which always reports 1152 features, on a SigLIP of another width.
    During the epoch: a `--version` whose turn separators the tokenizer does not have as tokens (the
    `102 vs. 104` of `--version v1` on Yi, haotian-liu/LLaVA#1166; the codebase falls back to vicuna_v1
    for names it does not define), and images missing under `--image_folder` - original LLaVA raises
    `FileNotFoundError` hours into the first epoch, LLaVA-NeXT silently trains on the neighbouring
    sample instead. At inference: a LLaVA checkpoint restarted with another `--mm_projector_type`
    keeps its old projector but saves the new type into its config. A name that cannot be resolved
    offline is reported with what could therefore not be checked.
    """
    fix = """
    Point the flag at what the training code needs (the finding names what it found instead): pass a
    hub id or --map for models not on disk, the adapter of the same LLM and tower, a
    --mm_vision_select_layer inside the tower, a template of the LLM's family, and fix or drop the
    samples whose images are missing. For a local SigLIP under LLaVA-NeXT, pass the hub id
    (google/siglip-so400m-patch14-384) with the folder in the HF cache, or make build_vision_tower test
    "siglip" first (inst-it/inst-it#3).
    """
    valid = (
        Example("LLaVA v1.5 finetune", launch(FINETUNE, adapter=projector_file(5120, 1024))),
        Example("LLaVA v1.5 pretrain", launch(PRETRAIN)),
        Example("OneVision with a hub SigLIP", launch(ONEVISION, **NEXT)),
    )
    invalid = (
        Example("an adapter of another LLM", launch(FINETUNE, adapter=projector_file(4096, 1024)), count=1,
                contains=("size mismatch for 0.weight: copying a param with shape torch.Size([4096, 1024])",
                          "torch.Size([5120, 1024])")),
        Example("a local SigLIP folder on LLaVA-NeXT",
                launch({**ONEVISION, "vision_tower": "./models/siglip-so400m-patch14-384"},
                       **{**NEXT, "tower": SIGLIP_SO400M}, tower_how="local path"), count=1,
                contains=("built as CLIPVisionTower", "siglip")),
        Example("a SigLIP hub id on original LLaVA", launch({**FINETUNE, "vision_tower": "google/siglip-so400m-patch14-384"},
                                                            tower=SIGLIP_SO400M, adapter=projector_file(5120, 1152)),
                count=1, contains=("Unknown vision tower",)),
        Example("a select layer beyond the tower", launch({**FINETUNE, "mm_vision_select_layer": -30},
                                                          adapter=projector_file(5120, 1024)), count=1,
                contains=("hidden_states[-30]", "24-layer")),
        Example("--version v1 on a Qwen2 tokenizer", launch({**ONEVISION, "version": "v1"}, **NEXT), count=1,
                contains=("'</s>'", "qwen_1_5")),
        Example("a model not in the HF cache", launch(FINETUNE, model=None, adapter=projector_file(5120, 1024)), count=1,
                contains=("not checked", "tokenization audit")),
        Example("a template LLaVA does not define", launch({**FINETUNE, "version": "qwen_1_5"},
                                                           adapter=projector_file(5120, 1024)), count=1,
                contains=("vicuna_v1",)),
    )

    def run_launch(self, artifact: Launch, context: Context) -> Iterable[Finding]:
        yield from self._reference(artifact, artifact.model)
        yield from self._tower(artifact)
        yield from self._projector(artifact)
        yield from self._version(artifact)
        yield from self._data(artifact)

    # ---------------------------------------------------------------------------------- helpers

    def _emit(self, artifact: Launch, message: str, *, flag: str, phase: str, severity: Severity | None = None,
              observed=None, expected=None, **extra) -> Finding:
        return self.finding(message, artifact=artifact.name, location=artifact.where(flag), observed=observed,
                            expected=expected, severity=severity, phase=phase, **extra)

    def _reference(self, artifact: Launch, ref: Reference | None) -> Iterable[Finding]:
        if ref is None:
            return
        flag = f"--{ref.flag} {ref.value}"
        if not ref.found and ref.missing_local:
            yield self._emit(artifact, f"{flag}: {ref.how}; from_pretrained raises OSError at launch; expected an "
                             "existing folder or a hub id", flag=ref.flag, phase="launch", observed="missing",
                             expected="a model folder")
        elif not ref.found:
            skipped = _not_checked(artifact, ref.flag)
            yield self._emit(
                artifact, f"{flag}: {ref.how}; not checked because of it: {', '.join(skipped)}; expected the folder "
                "on this machine", flag=ref.flag, phase="launch", severity=Severity.WARNING, observed="not found offline",
                expected="a local folder", not_checked=skipped,
                fix=f"Download it where the run will find it, or pass --map {ref.value}=DIR to preflight.")
        elif ref.config is None:
            yield self._emit(artifact, f"{flag}: {ref.config_problem or 'no config.json'} ({ref.how}); from_pretrained "
                             "raises OSError at launch; expected a model folder with config.json", flag=ref.flag,
                             phase="launch", observed=ref.path, expected="config.json")

    def _tower(self, artifact: Launch) -> Iterable[Finding]:
        value = artifact.arg("vision_tower")
        if not value:
            return
        ref = artifact.tower
        cls, family = tower_class(artifact.codebase, str(value), bool(ref and ref.how == "local path"),
                                  s2=bool(artifact.arg("s2", False)))
        owner = "LLaVA" if artifact.codebase == "llava" else "LLaVA-NeXT"
        if cls == "ValueError":
            known = "CLIP only (openai/..., laion/..., ShareGPT4V or an existing path)" if artifact.codebase == "llava" \
                else "CLIP, SigLIP (a name containing 'siglip'), hf:..., open_clip_hub:..., imagebind_huge, mlcd"
            yield self._emit(artifact, f"--vision_tower {value}: {owner}'s build_vision_tower raises `ValueError: Unknown "
                             f"vision tower: {value}` at launch; expected a tower it builds: {known}", flag="vision_tower",
                             phase="launch", observed=value, expected=known)
            return
        yield from self._reference(artifact, ref)
        facts = tower_facts(ref.config) if ref is not None and ref.found else None
        if facts is None:
            return
        if family and facts["family"] != family:
            why = ("tests os.path.exists before \"siglip\" in the name, so this local folder is" if family == "clip"
                   and artifact.codebase == "llava-next" else "builds it as")
            yield self._emit(
                artifact, f"--vision_tower {value}: {owner}'s build_vision_tower {why} built as {cls}, but the folder "
                f"holds a {facts['model_type']} model: `You are using a model of type {facts['model_type']} to instantiate "
                f"a model of type {family}_vision_model`, then size-mismatch errors (or a randomly initialised tower) "
                f"at launch; expected a {family.upper() if family == 'clip' else 'SigLIP'} folder for {cls}",
                flag="vision_tower", phase="launch", observed=facts["model_type"], expected=f"{family} for {cls}",
                tower_class=cls)
            return
        width = facts.get("hidden_size")
        if cls == "SigLipVisionTower" and artifact.codebase == "llava-next" and isinstance(width, int) \
                and width != NEXT_SIGLIP_HIDDEN:
            yield self._emit(
                artifact, f"--vision_tower {value}: LLaVA-NeXT's SigLipVisionTower reports hidden_size "
                f"{NEXT_SIGLIP_HIDDEN} from its own default config, but this SigLIP's features are {width} wide: the "
                f"projector is built for {NEXT_SIGLIP_HIDDEN} inputs and the first forward raises `mat1 and mat2 "
                "shapes cannot be multiplied`; expected siglip-so400m (1152)", flag="vision_tower", phase="step 1",
                observed=width, expected=NEXT_SIGLIP_HIDDEN)
        if cls in CLIP_CLASSES:
            valid = select_layer_range(facts)
            layer = artifact.arg("mm_vision_select_layer", -1)
            if valid and isinstance(layer, int) and not valid[0] <= layer <= valid[1]:
                yield self._emit(
                    artifact, f"--mm_vision_select_layer {layer}: feature_select takes hidden_states[{layer}] of a "
                    f"{facts['layers']}-layer tower ({facts['layers'] + 1} hidden states) and raises `IndexError: tuple "
                    f"index out of range` at the first forward; expected {valid[0]}..{valid[1]} (LLaVA uses -2)",
                    flag="mm_vision_select_layer", phase="step 1", observed=layer, expected=list(valid))

    def _projector(self, artifact: Launch) -> Iterable[Finding]:
        if not artifact.arg("vision_tower"):
            return
        ptype = str(artifact.arg("mm_projector_type", "linear"))
        if not known_projector_type(ptype, artifact.codebase):
            yield self._emit(artifact, f"--mm_projector_type {ptype}: build_vision_projector raises `ValueError: Unknown "
                             "projector type` at launch; expected linear, mlpNx_gelu or identity", flag="mm_projector_type",
                             phase="launch", observed=ptype, expected="linear | mlp2x_gelu")
            return
        model = artifact.model
        base = model.config if model is not None and model.found else None
        existing = is_llava_checkpoint(base)
        if existing and base.get("mm_projector_type") and base["mm_projector_type"] != ptype:
            yield self._emit(
                artifact, f"--mm_projector_type {ptype} on the LLaVA checkpoint {model.value}, whose projector is "
                f"{base['mm_projector_type']}: initialize_vision_modules keeps the existing {base['mm_projector_type']} "
                f"projector but writes mm_projector_type={ptype} into the saved config, so loading the result for "
                f"inference fails with size mismatches; expected --mm_projector_type {base['mm_projector_type']}",
                flag="mm_projector_type", phase="inference", severity=Severity.WARNING, observed=ptype,
                expected=base["mm_projector_type"])
        adapter = artifact.adapter
        if adapter is None:
            return
        flag = f"--pretrain_mm_mlp_adapter {adapter.value}"
        if adapter.unsafe:
            yield self._emit(artifact, f"{flag}: its pickle needs globals outside the tensor allow-list "
                             f"({', '.join(adapter.unsafe[:3])}); torch.load runs them (weights_only=False, torch < 2.6) "
                             "or refuses the file; it was not loaded here; expected a plain tensor state dict",
                             flag="pretrain_mm_mlp_adapter", phase="launch", observed=list(adapter.unsafe),
                             expected="tensors only")
            return
        if adapter.shapes is None:
            yield self._emit(artifact, f"{flag}: {adapter.problem}; expected the mm_projector.bin of the pretraining "
                             "stage", flag="pretrain_mm_mlp_adapter", phase="launch", observed=adapter.problem,
                             expected="a readable mm_projector.bin")
            return
        state = adapter_state(adapter.shapes)
        if not state:
            yield self._emit(artifact, f"{flag}: none of its {len(adapter.shapes)} keys contains 'mm_projector.', so "
                             "initialize_vision_modules loads an empty dict: `Missing key(s) in state_dict`; expected the "
                             "mm_projector.bin that pretraining writes", flag="pretrain_mm_mlp_adapter", phase="launch",
                             observed=sorted(adapter.shapes)[:3], expected="model.mm_projector.* keys")
            return
        if existing:
            kind, mm_hidden, hidden = base["mm_projector_type"], base.get("mm_hidden_size"), base.get("hidden_size")
            origin = f"the projector of {model.value}"
        else:
            tower = artifact.tower
            cls, _family = tower_class(artifact.codebase, str(artifact.arg("vision_tower")),
                                       bool(tower and tower.how == "local path"))
            facts = tower_facts(tower.config) if tower is not None and tower.found else None
            kind, mm_hidden = ptype, tower_width(artifact.codebase, cls, facts)
            hidden = llm_hidden_size(base)
            origin = f"--mm_projector_type {ptype}"
        if not isinstance(mm_hidden, int) or not isinstance(hidden, int):
            return  # the unresolved model or tower is reported with what it leaves unchecked
        expected = projector_shapes(str(kind), mm_hidden, hidden)
        if expected is None:
            return
        errors = load_state_dict_errors(expected, state)
        if errors:
            container = "Linear" if kind == "linear" else "Sequential"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            yield self._emit(
                artifact, f"{flag} does not fit {origin} between the tower's {mm_hidden} and the LLM's {hidden} "
                f"features: `Error(s) in loading state_dict for {container}: {errors[0]}`{more} at launch; expected "
                "an adapter pretrained with the same LLM, tower and projector type", flag="pretrain_mm_mlp_adapter",
                phase="launch", observed={k: list(v) for k, v in state.items()},
                expected={k: list(v) for k, v in expected.items()})

    def _version(self, artifact: Launch) -> Iterable[Finding]:
        from llava_doctor.templates.recipes import resolve_template

        version = str(artifact.arg("version", "v0"))
        template, note = resolve_template(artifact.recipe, version)
        if note and version != "v0":
            yield self._emit(artifact, f"--version {version}: {note}; expected a template this train.py defines",
                             flag="version", phase="epoch", severity=Severity.WARNING, observed=version,
                             expected=template.name)
        model = artifact.model
        if model is None or not model.found or not model.special_tokens:
            return
        needed = TEMPLATE_TOKENS.get(template.sep_style.value, ())
        missing = [t for t in needed if t not in model.special_tokens]
        if missing:
            better = _suggest_template(model.special_tokens, artifact.codebase)
            yield self._emit(
                artifact, f"--version {version} ({template.name}) ends every turn with {missing[0]!r}, which the "
                f"tokenizer of {model.value} does not have as a token: the per-round lengths drift from the full "
                "tokenization, LLaVA prints `WARNING: tokenization mismatch: X vs. Y. (ignored)` and masks the whole "
                f"sample (`102 vs. 104`, haotian-liu/LLaVA#1166); expected "
                f"{'--version ' + better if better else 'a template of this LLM family'}", flag="version",
                phase="epoch", observed=version, expected=better, missing_tokens=missing)

    def _data(self, artifact: Launch) -> Iterable[Finding]:
        value = artifact.arg("data_path")
        if not value:
            yield self._emit(artifact, "--data_path is not given: LazySupervisedDataset opens None and raises at "
                             "launch; expected the training JSON", flag="data_path", phase="launch",
                             observed=None, expected="a path")
            return
        data = artifact.data
        if data is not None and data.problem:
            yield self._emit(artifact, f"--data_path {value}: {data.problem}; the dataset raises at launch; expected "
                             "a JSON list of LLaVA records", flag="data_path", phase="launch", observed=data.problem,
                             expected="readable data")
        images: ImageCheck | None = artifact.images
        if images is None or not images.records_with_images:
            return
        folder = artifact.arg("image_folder")
        if not folder:
            yield self._emit(artifact, f"--image_folder is not given but {images.records_with_images} records name "
                             "an image: os.path.join(None, ...) raises TypeError at the first one; expected the folder "
                             "the image paths are relative to", flag="image_folder", phase="step 1", observed=None,
                             expected="a folder")
            return
        yield from self._images(artifact, images, str(folder))

    def _images(self, artifact: Launch, images: ImageCheck, folder: str) -> Iterable[Finding]:
        crash = artifact.codebase == "llava"
        severity = Severity.ERROR if crash else Severity.WARNING
        checked = f"{images.checked} of {images.total} checked" if images.sampled else f"all {images.total}"
        if crash and images.lists:
            yield self._emit(artifact, f"{images.lists} records give a list of images; LLaVA's __getitem__ joins "
                             "image_folder with the list and raises TypeError; expected one image file per record",
                             flag="data_path", phase="epoch", observed=images.lists, expected=0)
        if images.malformed:
            sample, why = images.malformed[0]
            yield self._emit(artifact, f"{len(images.malformed)} image values are not file names (first: sample "
                             f"{sample}: {why}); expected a path relative to --image_folder", flag="data_path",
                             phase="epoch", observed=len(images.malformed), expected=0)
        missing = images.missing + [ref for ref, _why in images.not_regular]
        if missing:
            total = images.total
            estimate = round(len(missing) / images.checked * total) if images.sampled else len(missing)
            if crash:
                after = (total + 1) / (estimate + 1)
                what = (f"original LLaVA raises FileNotFoundError at the first one and the run stops (with a shuffled "
                        f"sampler, after about {after:,.0f} samples)")
            else:
                what = ("LLaVA-NeXT catches the error, sleeps 3 x 1 s and trains on the neighbouring sample instead: "
                        "these samples are silently replaced")
            yield self._emit(
                artifact, f"{len(missing)} of {checked} image references are missing under --image_folder {folder} "
                f"({_first(missing)}; about {estimate / max(total, 1):.1%} of the images); {what}; expected "
                "every image to exist", flag="image_folder", phase="epoch", severity=severity,
                observed=len(missing), expected=0, checked=images.checked, total=total, estimated_missing=estimate)
        bad = images.undecodable + images.oversized
        if bad:
            yield self._emit(
                artifact, f"{len(bad)} of {images.decoded} images opened cannot be decoded as the training code opens "
                f"them ({_first(bad)}); Image.open(...).convert('RGB') raises in __getitem__; expected "
                "images Pillow decodes", flag="image_folder", phase="epoch",
                severity=Severity.ERROR if crash or images.oversized else Severity.WARNING,
                observed=len(bad), expected=0, decoded=images.decoded)
