"""The healthy tiny model really learns the embedded dataset (the reference every failure is compared with)."""
from __future__ import annotations

import time

import pytest

from llava_doctor.core.configs import prepare_vision_tower
from llava_doctor.core.data import default_splits
from llava_doctor.core.images import COLORS, SHAPES
from llava_doctor.core.learn import describe_accuracy, train_healthy_model


@pytest.mark.slow
def test_healthy_model_learns_to_name_shape_and_colour(tmp_path):
    started = time.perf_counter()
    prepare_vision_tower(tmp_path, "clip")  # the default, briefly pretrained base tower
    tower_seconds = time.perf_counter() - started
    model, tokenizer, result = train_healthy_model(tmp_path)  # HEALTHY_CONFIG: 300 steps
    train_seconds = time.perf_counter() - started - tower_seconds
    logged = [entry["loss"] for entry in result.log_history if "loss" in entry]
    accuracy = describe_accuracy(model, tokenizer, default_splits()[1])
    print(
        f"\ntower {tower_seconds:.1f}s, train {train_seconds:.1f}s; loss {result.first_loss:.3f} -> {result.last_loss:.4f}; "
        f"held-out shape {accuracy.shape:.2f} colour {accuracy.color:.2f} position {accuracy.position:.2f} "
        f"shape+colour {accuracy.shape_and_color:.2f} (chance {1 / (len(SHAPES) * len(COLORS)):.3f}); {accuracy.examples[:2]}"
    )
    assert result.first_loss > 4.0 and logged[-1] < 0.1 * logged[0]
    assert accuracy.samples == 48
    assert accuracy.color >= 0.8 and accuracy.shape >= 0.6 and accuracy.shape_and_color >= 0.6
