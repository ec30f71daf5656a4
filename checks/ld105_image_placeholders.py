"""LD105: `<image>` placeholders in the human turns disagree with the sample's images."""
from __future__ import annotations

from typing import Iterable

from llava_doctor.findings import Finding
from llava_doctor.registry import Check, Context, Example


def _clean():
    from llava_doctor.templates.examples import dataset, record

    two = record("two", "a cat .")
    two["image"] = ["a.jpg", "b.jpg"]
    two["conversations"][0]["value"] = "<image>\n<image>\nwhat is this ?"
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


class ImagePlaceholders(Check):
    code = "LD105"
    title = "image placeholder count disagrees with the sample's images"
    artifact = "Dataset"
    rationale = """
    Each image needs exactly one `<image>` placeholder in the human turns. HF-native LLaVA raises
    `ValueError: Image features and image tokens do not match: tokens: 6552, features 6556`
    (huggingface/transformers#36002); original LLaVA silently merges several placeholders into one
    (preprocess_multimodal) or, with no placeholder, tokenizes the sample without the image, and
    `<image>` in a text-only sample becomes ordinary text. Counted: `<image>` in human turns
    against 1 for "image": "file", len(list) for a list, 0 when there is no image.
    """
    fix = "Put one `<image>` per image in the human turns (LLaVA moves a single one to the front)."
    valid = (Example("one, none and two images with matching placeholders", _clean),)
    invalid = (Example("missing, extra and duplicated placeholders", _mismatched, count=3,
                       contains=("sample missing", "sample extra", "sample double", "0 <image>", "2 <image>")),)

    def run(self, artifact, context: Context) -> Iterable[Finding]:
        from llava_doctor.templates.analysis import placeholders_in_human_turns

        for sample in artifact.samples:
            found = placeholders_in_human_turns(sample.conversation)
            if found == sample.images:
                continue
            images = "no image" if sample.images == 0 else f"{sample.images} image(s)"
            yield self.finding(
                f"sample {sample.id}: {found} <image> placeholder(s) in the human turns but {images}",
                artifact=artifact.name, location=f"sample {sample.id}", observed=found, expected=sample.images,
                sample=sample.id, placeholders=found, images=sample.images,
            )
