"""LD105: `<image>` placeholders disagree with the sample's images, or text looks like a placeholder but is not one."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding, Severity
from llava_doctor.registry import Check, Context, Example


def _clean():
    from llava_doctor.templates.examples import dataset, record

    two = record("two", "a cat .")
    two["image"] = ["a.jpg", "b.jpg"]
    two["conversations"][0]["value"] = "<image>\nwhat is this ?"
    two["conversations"][1]["value"] = "a cat ."
    two["conversations"].append({"from": "human", "value": "<image>\nand this ?"})
    two["conversations"].append({"from": "gpt", "value": "a dog ."})
    return dataset([record("s1", "a cat ."), record("text", "yes .", image=False), two], "v1")


def _mismatched():
    from llava_doctor.templates.examples import dataset, record

    missing = record("missing", "a cat .")
    missing["conversations"][0]["value"] = "what is this ?"
    extra = record("extra", "a cat .", image=False)
    extra["conversations"][0]["value"] = "<image>\nwhat is this ?"
    double = record("double", "a cat .")
    double["conversations"][0]["value"] = "<image>\n<image>\nwhat is this ?"
    return dataset([missing, extra, double, record("fine", "yes .")], "v1")


def _video_in_next():
    from llava_doctor.templates.examples import dataset, record

    video = record("clip", "a cat .", image=False)
    video["video"] = "clip.mp4"
    video["conversations"][0]["value"] = "<video>\nwhat is this ?"
    return dataset([video], "v1", recipe="llava-next")


class ImagePlaceholders(Check):
    code = "LD105"
    title = "image placeholders disagree with the sample's images, or text looks like a placeholder"
    artifact = "Dataset"
    rationale = """
    Each image needs exactly one `<image>` placeholder, and the training code decides what is one.
    HF-native LLaVA raises `ValueError: Image features and image tokens do not match: tokens: 6552,
    features 6556` (huggingface/transformers#36002); original LLaVA's preprocess_multimodal moves
    every `<image>` of a sentence to its front and merges several into one, LLaVA-NeXT keeps
    several in place, and with no placeholder the image is silently unused. The count checked is the
    one the model sees (IMAGE_TOKEN_INDEX positions after the codebase's preprocessing) against 1
    for "image": "file", len(list) for a list, one more for a LLaVA-NeXT "video". Text that only looks
    like a placeholder is named too, with what the codebase does with it: `<image>` in a record
    without an image key is tokenized as plain text (preprocess_multimodal never runs), `<video>` is
    never a placeholder, `<image>` in an answer becomes an image position inside the answer, and a
    typed `<im_start>`/`<im_end>` or `<Image>` is doubled by mm_use_im_start_end / mmtag versions.
    """
    fix = ("Put one `<image>` per image in the human turns (LLaVA moves a single one to the front); "
           "give text-only samples no `<image>`, and a video sample an `<image>` placeholder.")
    valid = (Example("one, none and two images with matching placeholders", _clean),)
    invalid = (
        Example("missing, extra and duplicated placeholders", _mismatched, count=3,
                contains=("sample missing", "sample extra", "sample double", "0 <image>", "2 <image>",
                          "tokenizes it as text")),
        Example("a LLaVA-NeXT video record with <video> text", _video_in_next, count=2,
                contains=("`<video>` is not a placeholder", "0 <image> placeholder(s) reach the model")),
    )

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.templates.lookalike import lookalikes, placeholder_counts

        codebase = artifact.recipe
        for a in artifact.analyses():
            sample, sid = a.sample, a.sample.id
            where = f"sample {sid}"
            images = sample.visual_inputs(codebase) if sample.multimodal(codebase) else 0
            in_text, seen = placeholder_counts(sample, codebase, a.result, artifact.mm_use_im_start_end)
            if seen != images or (in_text != images and sample.multimodal(codebase)):
                kind = "no image" if images == 0 else f"{images} image(s)"
                merged = f" ({in_text} <image> in the text)" if in_text != seen else ""
                severity = Severity.ERROR if seen != images else Severity.WARNING
                yield self.finding(
                    f"sample {sid}: {seen} <image> placeholder(s) reach the model{merged} but the record has {kind}",
                    artifact=artifact.name, location=where, observed=seen, expected=images, severity=severity,
                    sample=sid, index=sample.index, placeholders=seen, in_text=in_text, images=images,
                    group=f"{seen} <image> placeholder(s) reach the model{merged} but the record has {kind}",
                )
            for what in lookalikes(sample, codebase, a.result.template, artifact.tokenizer, artifact.mm_use_im_start_end):
                yield self.finding(
                    f"sample {sid}: {what}", artifact=artifact.name, location=where, severity=Severity.WARNING,
                    sample=sid, index=sample.index, group=what,
                )
