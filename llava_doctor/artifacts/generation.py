"""Generation: what a model answered about images, the health of every step, and the same prompt with neutral images.

`Generation` is a plain record (no torch) the LD5xx checks read: per image and prompt, the generated
ids and text, per-step logit health, the first module whose output went non-finite, what the image
path (vision tower -> projector -> the LLM's input sequence) looked like on the first step, and the
answers to the same prompt with a blank and a noise image of the same size.

`run_generation` is the adapter that fills it from a live model. It receives the model, its
tokenizer and an inputs builder (``artifacts.model_inputs``: the family's prompt format and image
processing; clients such as ``core.builder`` supply it), decodes greedily with the model's own
``generate`` and watches with forward hooks that stay on the device: the logits of every step and
the outputs of the tower, the projector and every decoder layer are reduced to flags there, and read
back once at the end. Only when something went non-finite is that step replayed with a hook on every
module, to name the first one. The neutral images run as one batch that stops as soon as every row
has answered differently from the image. A step is one generated token (1-based); the first step's
forward also encodes the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..findings import InputError, one_line
from ..quiet import quiet_libraries

DEFAULT_PROMPT = "Describe the image."
DEFAULT_MAX_NEW_TOKENS = 32
NEUTRAL_IMAGES = ("blank", "noise")


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class StepHealth:
    finite: bool  # every logit of the step is finite
    nan: bool = False  # some logit is NaN (otherwise the non-finite ones are +-inf)
    max_abs: float | None = None  # the largest finite |logit|


@dataclass(frozen=True)
class NonFinite:
    module: str  # the first module, in execution order, whose output held inf/NaN
    step: int
    value: str  # "inf" or "nan"


@dataclass(frozen=True)
class NeutralAnswer:
    """The same prompt with a neutral image of the same size, compared with the image's own run."""

    image: str  # "blank" (flat grey) or "noise" (seeded uniform noise)
    token_ids: tuple[int, ...]  # greedy ids, generated until they differ from the image's answer
    text: str
    same_output: bool  # the same greedy ids over the whole of the image's answer
    first_step_tv: float | None  # total variation between the two first-step next-token distributions (0 = identical)
    max_tv: float | None = None  # the largest such distance over the steps whose context was still the same
    tower_change: float | None = None  # relative L2 change of the tower output against the image's run (step 1)
    projector_change: float | None = None  # the same for the projector output
    sequence_change: float | None = None  # the same for the LLM's input sequence (where image features are spliced)


@dataclass(frozen=True)
class ImageProbe:
    """The image path on the image's own first step (None where a part was not found or not reached)."""

    tower: str | None = None  # module names
    projector: str | None = None
    sequence: str | None = None  # the first decoder layer: its input is the spliced sequence
    tower_finite: bool | None = None
    projector_finite: bool | None = None
    projector_rms: float | None = None
    text_embedding_rms: float | None = None  # RMS of the LLM's input embedding matrix, for scale


@dataclass(frozen=True)
class Sample:
    image: str
    prompt: str
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]  # generated ids only
    text: str  # decoded generated ids, special tokens skipped
    steps: tuple[StepHealth, ...]  # one per generated token
    pieces: tuple[str, ...] = ()  # each generated token's text in context ("".join = the answer with specials)
    first_nonfinite: NonFinite | None = None
    neutral: tuple[NeutralAnswer, ...] = ()
    probe: ImageProbe | None = None

    @property
    def nonfinite_steps(self) -> tuple[int, ...]:
        return tuple(step for step, health in enumerate(self.steps, start=1) if not health.finite)

    def span_text(self, start: int, length: int) -> str:
        """The text of generated tokens [start, start + length) (0-based), or their ids when not decoded."""
        if len(self.pieces) >= start + length:
            return "".join(self.pieces[start:start + length])
        return " ".join(map(str, self.token_ids[start:start + length]))

    def label(self) -> str:
        return f"{self.image} / {self.prompt!r}"


@dataclass(frozen=True)
class Generation:
    kind: ClassVar[str] = "Generation"  # the artifact kind checks declare (registry.ARTIFACT_KINDS)
    name: str  # the checkpoint or model it came from
    dtype: str  # the model's dtype while generating
    token_zero: str  # what the tokenizer decodes id 0 to ('!' in Qwen2, '<unk>' in Llama)
    samples: tuple[Sample, ...]
    family: str = ""
    device: str = ""
    eos_token_ids: tuple[int, ...] = ()
    max_new_tokens: int = 0
    notes: tuple[str, ...] = ()  # what could not be watched or compared, and how prompts were built

    def to_dict(self) -> dict[str, Any]:
        """Everything the record holds, JSON-able (the CLI's text and JSON output)."""
        from dataclasses import asdict

        return asdict(self)


DTYPES = ("float16", "bfloat16", "float32")


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- hooks


def float_tensors(output: Any) -> Iterator[Any]:
    """The floating-point tensors of a module output (a tensor, a tuple/list, or a ModelOutput/dict)."""
    import torch

    if isinstance(output, torch.Tensor):
        if output.is_floating_point():
            yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from float_tensors(item)
    elif isinstance(output, dict):  # transformers' ModelOutput is an OrderedDict
        for item in output.values():
            yield from float_tensors(item)


def first_float(output: Any) -> Any:
    """A module's main output: a vision model's last_hidden_state, else its first floating-point tensor."""
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if hidden is not None else next(float_tensors(output), None)


@dataclass
class ImagePath:
    """Where to hook: the model itself (PEFT / DDP wrappers peeled off: its forward gives the logits), and
    (name, module) of the tower, the projector, and the LLM's decoder layers."""

    root: Any = None
    tower: tuple[str, Any] | None = None
    projector: tuple[str, Any] | None = None
    layers: list[tuple[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def image_path(model: Any) -> ImagePath:
    """The tower and projector through the live-model adapter's component map; the decoder layers are the
    largest ModuleList outside them."""
    import torch

    from .live import inspect_model, unwrap

    names = {id(module): name for name, module in model.named_modules()}
    path = ImagePath(root=unwrap(model)[0])
    try:
        modules = inspect_model(model).modules
    except InputError as error:
        modules = {}
        path.notes.append(f"image path not watched: {error}")
    for part in ("tower", "projector"):
        module = modules.get(part)
        if module is not None and id(module) in names:
            setattr(path, part, (names[id(module)], module))
    inside = tuple(f"{p[0]}." for p in (path.tower, path.projector) if p is not None)
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) and not f"{name}.".startswith(inside)]
    if lists:
        name, layers = max(lists, key=lambda item: len(item[1]))
        path.layers = [(f"{name}.{index}", layer) for index, layer in enumerate(layers)]
    return path


class StepWatch:
    """Forward hooks for one generate call. Every step: the last-position logits' health, the next-token
    log-probabilities, and whether the tower, the projector or a decoder layer produced a non-finite value,
    all as device tensors. First step: the tower and projector outputs and the LLM's input sequence.

    LLaVA's own ``generate`` encodes the image before the LLM's first forward: that counts as step 1."""

    def __init__(self, model: Any, path: ImagePath, *, health: bool, logprobs: bool = True) -> None:
        self.step = 0
        self.health = health
        self.keep_logprobs = logprobs  # only the neutral-image comparison reads them
        self.logits: list[Any] = []  # per step: (rows, 3) finite, nan, max |finite logit|
        self.logprobs: list[Any] = []  # per step: (rows, vocab) float32 log-softmax of the last position
        self.flags: list[tuple[int, str, Any]] = []  # (step, module, non-finite flag)
        self.first: dict[str, Any] = {}
        root = path.root if path.root is not None else model
        self._handles = [root.register_forward_pre_hook(self._next_step), root.register_forward_hook(self._on_logits)]
        for part, entry in (("tower", path.tower), ("projector", path.projector)):
            if entry is not None:
                self._handles.append(entry[1].register_forward_hook(self._on_part(part, entry[0])))
        for index, (name, layer) in enumerate(path.layers):
            if index == 0:
                self._handles.append(layer.register_forward_pre_hook(self._on_sequence, with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._on_part(None, name)))

    def _next_step(self, _module, _inputs) -> None:
        self.step += 1

    def _on_logits(self, _module, _inputs, output) -> None:
        import torch

        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
        if not isinstance(logits, torch.Tensor):
            return
        row = logits[:, -1].float()
        finite = torch.isfinite(row)
        if self.keep_logprobs:
            self.logprobs.append(torch.log_softmax(row, dim=-1))
        if self.health:
            largest = torch.where(finite, row.abs(), torch.zeros_like(row)).amax(dim=-1)
            self.logits.append(torch.stack([finite.all(dim=-1).float(), torch.isnan(row).any(dim=-1).float(), largest], -1))
        self.flags.append((self.step, "logits", ~finite.all()))

    def _on_part(self, part: str | None, name: str) -> Callable:
        import torch

        def hook(_module, _inputs, output) -> None:
            tensor = first_float(output)
            if tensor is None:
                return
            step = max(self.step, 1)
            if part is not None and step == 1 and part not in self.first:
                self.first[part] = tensor.detach()
            self.flags.append((step, name, ~torch.isfinite(tensor).all()))

        return hook

    def _on_sequence(self, _module, args, kwargs) -> None:
        if self.step <= 1 and "sequence" not in self.first:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is not None:
                self.first["sequence"] = hidden.detach()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def first_nonfinite_step(self) -> int | None:
        """The first step where a watched output went non-finite (one host sync)."""
        import torch

        if not self.flags:
            return None
        bad = torch.stack([flag.to("cpu") for _, _, flag in self.flags]).tolist()
        return next((step for (step, _, _), flag in zip(self.flags, bad) if flag), None)

    def step_health(self) -> list[StepHealth]:
        import torch

        if not self.logits:
            return []
        rows = torch.stack([entry[0].to("cpu") for entry in self.logits]).tolist()
        return [StepHealth(finite=bool(f), nan=bool(n), max_abs=float(m) if math.isfinite(m) else None) for f, n, m in rows]


def first_nonfinite_module(model: Any, run: Callable[[], Any]) -> tuple[str, str] | None:
    """(name, "inf" | "nan") of the first module, in execution order, whose output holds a non-finite value
    during `run()`: a hook on every module, used only to replay a step that went wrong."""
    import torch

    found: list[tuple[str, str]] = []

    def watch(name: str) -> Callable:
        def hook(_module, _inputs, output) -> None:
            if found:
                return
            for tensor in float_tensors(output):
                if not bool(torch.isfinite(tensor).all()):
                    found.append((name, "inf" if bool(torch.isinf(tensor).any()) else "nan"))
                    return

        return hook

    handles = [module.register_forward_hook(watch(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


# ----------------------------------------------------------------------------- the adapter


class _AgreesWith:
    """A stopping criterion for the neutral batch: stop once every row's greedy output differs from `target`."""

    def __init__(self, target: Sequence[int]) -> None:
        self.target = list(target)
        self.step = 0
        self.diverged: list[bool] | None = None

    def __call__(self, input_ids, scores=None, **kwargs) -> bool:
        self.step += 1
        latest = input_ids[:, -1].tolist()
        if self.diverged is None:
            self.diverged = [False] * len(latest)
        expected = self.target[self.step - 1] if self.step <= len(self.target) else None
        self.diverged = [d or token != expected for d, token in zip(self.diverged, latest)]
        return all(self.diverged)


def _stopping_list(criterion: Any) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Criterion(StoppingCriteria):
        def __call__(self, input_ids, scores=None, **kwargs):
            return criterion(input_ids, scores)

    return StoppingCriteriaList([Criterion()])


def _new_tokens(output: Any, inputs: dict[str, Any]) -> Any:
    """Generated ids only: transformers returns the prompt too unless it decoded from inputs_embeds."""
    import torch

    prompt = inputs.get("input_ids")
    if prompt is not None and output.shape[1] >= prompt.shape[1] and torch.equal(output[:, :prompt.shape[1]], prompt.to(output.device)):
        return output[:, prompt.shape[1]:]
    return output


def _trim(ids: list[int], stop_ids: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[:index + 1]
    return ids


def decode_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text in context: piece i is what decoding ids[:i+1] adds to decoding ids[:i]."""
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:end]), skip_special_tokens=False)
        pieces.append(text[len(previous):] if text.startswith(previous) else tokenizer.decode([ids[end - 1]]))
        previous = text
    return pieces


def _relative_change(reference: Any, rows: Any, count: int) -> list[Any]:
    """Per row of `rows` (a batch of `count`): |row - reference| / |reference| in float32, as device scalars."""
    import torch

    if reference is None or rows is None or rows.numel() != reference.numel() * count:
        return [None] * count
    ref = reference.reshape(-1).float()
    scale = torch.linalg.vector_norm(ref).clamp_min(torch.finfo(torch.float32).tiny)
    flat = rows.reshape(count, -1).float()
    return [torch.linalg.vector_norm(flat[i] - ref) / scale for i in range(count)]


def _total_variation(reference: Any, rows: Any) -> Any:
    """Per row of `rows` (log-probabilities): total variation distance to `reference` (one row), on the device."""
    return 0.5 * (rows.exp() - reference[:1].exp()).abs().sum(dim=-1)


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class GenerationRunner:
    """Runs greedy generation on a live model with the watches above; `sample()` gives one Sample."""

    def __init__(self, model: Any, tokenizer: Any, build_inputs: Callable, *, max_new_tokens: int, neutral: bool) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.build_inputs = build_inputs
        self.max_new_tokens = max_new_tokens
        self.neutral = neutral
        self.path = image_path(model)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.stop_ids = {int(e) for e in [*eos, getattr(tokenizer, "eos_token_id", None)] if e is not None}
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (min(self.stop_ids) if self.stop_ids else 0)
        self.notes: list[str] = list(self.path.notes)

    def _generate(self, kwargs: dict[str, Any], max_new_tokens: int, stopping: Any = None) -> Any:
        options = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=self.pad_id)
        if stopping is not None:
            options["stopping_criteria"] = stopping
        try:
            output = self.model.generate(**kwargs, **options)
        except (RuntimeError, ValueError, AttributeError, TypeError, IndexError) as error:
            # a tower never loaded, an image token the model does not know, a device mismatch: say it in one line
            text = one_line(error, 300)
            raise InputError(f"{type(self.model).__name__}.generate failed: {type(error).__name__}: {text}") from None
        return _new_tokens(output, kwargs)

    def sample(self, image_name: str, image: Any, prompt: str) -> Sample:
        inputs = self.build_inputs([image], prompt)
        self.notes.extend(note for note in inputs.notes if note not in self.notes)
        watch = StepWatch(self.model, self.path, health=True, logprobs=self.neutral)
        try:
            ids = self._generate(inputs.kwargs, self.max_new_tokens)[0].tolist()
        finally:
            watch.remove()
        ids = _trim(ids, self.stop_ids)
        nonfinite = self._first_nonfinite(inputs.kwargs, ids, watch.first_nonfinite_step())
        health = watch.step_health()[:len(ids)]
        finite = nonfinite is None and all(step.finite for step in health)  # NaN answers id 0 whatever the image
        neutral = self._neutral(image, prompt, ids, watch) if self.neutral and ids and finite else ()
        return Sample(
            image=image_name, prompt=prompt, prompt_ids=tuple(inputs.prompt_ids), token_ids=tuple(ids),
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(), steps=tuple(health),
            pieces=tuple(decode_pieces(self.tokenizer, ids)), first_nonfinite=nonfinite, neutral=tuple(neutral),
            probe=self._probe(watch.first),
        )

    def _first_nonfinite(self, kwargs: dict[str, Any], ids: list[int], step: int | None) -> NonFinite | None:
        """Replay the first step whose watched outputs went non-finite, with a hook on every module."""
        import torch

        if step is None:
            return None
        replay = dict(kwargs)
        if "input_ids" in replay and step > 1:
            extra = torch.tensor([ids[:step - 1]], dtype=replay["input_ids"].dtype, device=replay["input_ids"].device)
            replay["input_ids"] = torch.cat([replay["input_ids"], extra], dim=1)
            if "attention_mask" in replay:
                replay["attention_mask"] = torch.cat([replay["attention_mask"], torch.ones_like(extra)], dim=1)
        found = first_nonfinite_module(self.model, lambda: self.model(**replay))
        return NonFinite(module=found[0], step=step, value=found[1]) if found else None

    def _neutral(self, image: Any, prompt: str, ids: list[int], real: StepWatch) -> list[NeutralAnswer]:
        import torch

        from ..images import neutral_images

        neutrals = neutral_images(image.size)
        inputs = self.build_inputs([neutrals[name] for name in NEUTRAL_IMAGES], prompt)
        criterion = _AgreesWith(ids)
        watch = StepWatch(self.model, self.path, health=False)
        try:
            rows = self._generate(inputs.kwargs, len(ids), _stopping_list(criterion)).tolist()
        finally:
            watch.remove()
        count = len(NEUTRAL_IMAGES)
        changes = {part: _relative_change(real.first.get(part), watch.first.get(part), count)
                   for part in ("tower", "projector", "sequence")}
        steps = min(len(real.logprobs), len(watch.logprobs))
        tv = torch.stack([_total_variation(real.logprobs[k], watch.logprobs[k]) for k in range(steps)]).to("cpu").tolist() \
            if steps else []
        answers = []
        for index, name in enumerate(NEUTRAL_IMAGES):
            row = _trim(list(rows[index]), self.stop_ids)
            shared = next((k for k, (a, b) in enumerate(zip(row, ids)) if a != b), min(len(row), len(ids)))
            distances = [tv[k][index] for k in range(min(shared + 1, steps))]
            answers.append(NeutralAnswer(
                image=name, token_ids=tuple(row), text=self.tokenizer.decode(row, skip_special_tokens=True).strip(),
                same_output=row[:len(ids)] == ids, first_step_tv=_scalar(distances[0]) if distances else None,
                max_tv=_scalar(max(distances)) if distances else None,
                tower_change=_scalar(changes["tower"][index]), projector_change=_scalar(changes["projector"][index]),
                sequence_change=_scalar(changes["sequence"][index])))
        return answers

    def _probe(self, first: dict[str, Any]) -> ImageProbe:
        import torch

        def rms(tensor: Any) -> float | None:
            if tensor is None or not tensor.numel():
                return None
            return _scalar(torch.linalg.vector_norm(tensor.float()) / math.sqrt(tensor.numel()))

        def finite(tensor: Any) -> bool | None:
            return None if tensor is None else bool(torch.isfinite(tensor).all())

        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        text_rms = None
        if weight is not None and weight.numel() and not weight.is_meta:
            text_rms = _scalar(torch.linalg.vector_norm(weight.detach(), dtype=torch.float32) / math.sqrt(weight.numel()))
        return ImageProbe(
            tower=self.path.tower[0] if self.path.tower else None,
            projector=self.path.projector[0] if self.path.projector else None,
            sequence=self.path.layers[0][0] if self.path.layers else None,
            tower_finite=finite(first.get("tower")), projector_finite=finite(first.get("projector")),
            projector_rms=rms(first.get("projector")), text_embedding_rms=text_rms)


def run_generation(model: Any, tokenizer: Any, build_inputs: Callable, *, images: Sequence[tuple[str, Any]],
                   prompts: Sequence[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, neutral: bool = True,
                   name: str | None = None, family: str = "", notes: Sequence[str] = ()) -> Generation:
    """Answer every prompt about every image greedily (see the module docstring) and return the record.

    `images` are (name, RGB PIL image) pairs; `build_inputs(images, prompt)` returns ``ModelInputs``.
    The model runs in eval mode (its training flag is restored afterwards); nothing else about it changes.
    """
    import torch

    if not callable(getattr(model, "generate", None)):
        raise InputError(f"model: a {type(model).__name__} has no generate(); pass the LLaVA model itself")
    if not images or not prompts:
        raise InputError("generation needs at least one image and one prompt")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with quiet_libraries():
            runner = GenerationRunner(model, tokenizer, build_inputs, max_new_tokens=max_new_tokens, neutral=neutral)
            samples = [runner.sample(image_name, image, prompt) for image_name, image in images for prompt in prompts]
    finally:
        model.train(was_training)
    first_param = next((p for p in model.parameters() if p.is_floating_point()), None)
    model_dtype = getattr(model, "dtype", None) or (first_param.dtype if first_param is not None else torch.float32)
    return Generation(
        name=name or f"<{type(model).__name__}>", dtype=dtype_name(model_dtype), token_zero=tokenizer.decode([0]),
        samples=tuple(samples), family=family, device=str(first_param.device) if first_param is not None else "",
        eos_token_ids=tuple(sorted(runner.stop_ids)), max_new_tokens=max_new_tokens,
        notes=tuple(dict.fromkeys([*notes, *runner.notes])))


def as_image(index: int, value: Any) -> tuple[str, Any]:
    """(name, RGB PIL image) from a path (read bounded, ``llava_doctor.images``), a PIL image or an (H, W, 3) uint8 array."""
    import os

    if isinstance(value, (str, os.PathLike)):
        from ..images import read_image

        return os.fspath(value), read_image(value)
    if hasattr(value, "convert") and hasattr(value, "size"):
        return f"image[{index}]", value.convert("RGB")
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) == 3 and shape[-1] == 3 and str(getattr(value, "dtype", "")) == "uint8":
        from PIL import Image

        return f"image[{index}]", Image.fromarray(value, "RGB")
    raise InputError(f"images[{index}]: a {type(value).__name__}; expected a path, a PIL image or an (H, W, 3) uint8 array")


def produce_generation(model: Any, processor_or_tokenizer: Any, *, images: Sequence[Any], prompts: Sequence[str],
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, neutral: bool = True,
                       inputs_builder: Callable | None = None, conv_mode: str | None = None,
                       name: str | None = None) -> Generation:
    """`run_generation` for the API: images read or converted, the inputs builder defaulted from the processor
    or tokenizer (``model_inputs.default_inputs``)."""
    from .model_inputs import default_inputs

    if model is None or processor_or_tokenizer is None:
        raise InputError("check_generation: pass the model and its processor or tokenizer (or generation=)")
    if isinstance(prompts, str):
        prompts = [prompts]
    pairs = [as_image(index, value) for index, value in enumerate(images)]
    build = inputs_builder or default_inputs(model, processor_or_tokenizer, conv_mode=conv_mode)
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    return run_generation(model, tokenizer, build, images=pairs, prompts=list(prompts), max_new_tokens=max_new_tokens,
                          neutral=neutral, name=name)


# ----------------------------------------------------------------------------- the cause line

DEGENERATE_CODES = ("LD501", "LD502", "LD503", "LD504")


def _part_of(module: str, probe: ImagePath | ImageProbe | None) -> str | None:
    tower = getattr(probe, "tower", None)
    projector = getattr(probe, "projector", None)
    if tower and (module == tower or module.startswith(f"{tower}.")):
        return "vision tower"
    if projector and (module == projector or module.startswith(f"{projector}.")):
        return "projector"
    return None


def likely_cause(generation: Generation, findings: Sequence[Any], *, live_checked: bool = False) -> str | None:
    """One line naming the most likely cause of degenerate output, from this generation's findings and the
    live checks' (LD304, LD305) on the same model (`live_checked`: they ran); None when nothing is degenerate."""
    codes = {f.code for f in findings}
    if not codes & set(DEGENERATE_CODES):
        return None
    first_of = {}
    for finding in findings:
        first_of.setdefault(finding.code, finding)
    for sample in generation.samples:
        first = sample.first_nonfinite
        if first is None or not codes & {"LD502", "LD503"}:
            continue
        where = f"{first.module} produced {first.value} at step {first.step} in {generation.dtype}"
        part = _part_of(first.module, sample.probe)
        if part == "vision tower" or "LD304" in codes:
            return f"vision tower not loaded or holding garbage: {where} (LD503{', LD304' if 'LD304' in codes else ''})"
        if part == "projector" and "LD305" in codes:
            return f"projector newly initialised: {where} (LD503, LD305)"
        if generation.dtype == "float16":
            return f"fp16 overflow: {where} (LD503); run in bfloat16"
        return f"non-finite activations: {where} (LD503); look for NaN/Inf weights (audit --deep, LD204)"
    if "LD304" in codes:
        return f"vision tower not loaded or random (LD304: {first_of['LD304'].location or first_of['LD304'].artifact})"
    if "LD305" in codes:
        return f"projector newly initialised (LD305: {first_of['LD305'].location or first_of['LD305'].artifact})"
    if "LD504" in codes:
        part = first_of["LD504"].extra.get("silent_part", "image path")
        if part == "language model":  # the image path delivers; the LLM (or its head) answers without it
            repeats = " and repeats" if "LD501" in codes else ""
            return (f"the language model: the image features reach it, but its answer ignores them{repeats} (LD504"
                    f"{', LD501' if repeats else ''}); compare its weights with the base LLM (audit --base)")
        return f"image ignored: the {part} does not carry the image to the answer (LD504)"
    if codes & {"LD502", "LD503"}:
        fix = "; run in bfloat16" if generation.dtype == "float16" else ""
        return f"non-finite logits in {generation.dtype} (LD502/LD503){fix}"
    checked = "the live checks found the tower and projector loaded" if live_checked else \
        "the tower and projector were not inspected (LD304/LD305 did not run)"
    return f"the language model repeats on its own (LD501): the image reaches the answer, nothing went non-finite, {checked}"
