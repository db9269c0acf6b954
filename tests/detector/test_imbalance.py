"""The imbalance study: its settings, the measured foreground fraction, the step schedule, the runner."""

import dataclasses
import json

import pytest
import torch

from detector.ablation import (
    DEFAULT_SETTINGS,
    IMBALANCE_ROWS,
    SETTINGS,
    foreground_statistics,
    imbalance_config,
    run_grid,
)
from detector.config import TrainConfig
from detector.data import DigitCanvas
from detector.matcher import Matcher
from detector.train import learning_rate


def test_step_schedule_warms_up_then_divides_by_ten_at_two_thirds_and_eight_ninths():
    config = TrainConfig(lr=0.02, max_steps=900, warmup_steps=10, lr_schedule="step", max_minutes=0.0)
    lr = [learning_rate(config, step, 0.0) for step in range(900)]
    assert lr[0] == pytest.approx(0.002) and lr[4] == pytest.approx(0.01)
    assert all(x == pytest.approx(0.02) for x in lr[9:600])
    assert all(x == pytest.approx(0.002) for x in lr[600:800])
    assert all(x == pytest.approx(0.0002) for x in lr[800:])
    # The wall-clock budget moves the decays forward like the step budget does.
    assert learning_rate(config, 100, 0.7) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(dataclasses.replace(config, lr_schedule="linear"), 0, 0.0)


def test_settings_differ_only_in_digits_per_image_test_set_size_and_budget():
    configs = {name: imbalance_config(setting).to_dict() for name, setting in SETTINGS.items()}
    varying = {"min_digits", "max_digits", "num_test_images"}
    reference = configs["fg2"]
    for config in configs.values():
        assert {k: v for k, v in config["data"].items() if k not in varying} == {
            k: v for k, v in reference["data"].items() if k not in varying
        }
        assert config["model"] == reference["model"]
        budget = {"max_steps", "warmup_steps"}  # each setting's own budget; warm-up is 5 % of it
        assert {k: v for k, v in config["train"].items() if k not in budget} == {
            k: v for k, v in reference["train"].items() if k not in budget
        }
        assert config["train"]["warmup_steps"] == config["train"]["max_steps"] // 20
    train = imbalance_config(SETTINGS["fg2"]).train
    assert (train.optimizer, train.momentum, train.weight_decay, train.lr_schedule) == ("sgd", 0.9, 1e-4, "step")
    assert imbalance_config(SETTINGS["fg2"]).data.max_distractors > 0  # hard negatives at every setting
    assert set(DEFAULT_SETTINGS) <= set(SETTINGS)
    assert [r.name for r in IMBALANCE_ROWS] == [
        "ce",
        "fl-gamma2",
        "fl-gamma1",
        "fl-gamma0.5",
        "ohem128-1:3",
        "ohem512-1:3",
    ]


def test_foreground_fraction_counts_the_matchers_positive_anchors(fast_config):
    stats = foreground_statistics(fast_config, num_images=6)
    # The same count by hand: 64 px canvas -> P3-P7 of 8, 4, 2, 1, 1 cells, 9 anchors each.
    from detector.anchors import AnchorGenerator

    anchors = torch.cat(AnchorGenerator((8, 16, 32, 64, 128), 2.0)([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]))
    assert stats["anchors_per_image"] == len(anchors) == 9 * 86
    matcher, dataset = Matcher(10), DigitCanvas("train", fast_config.data)
    positives = objects = 0
    for index in range(6):
        _, target = dataset[index]
        labels, _ = matcher(anchors, target["boxes"], target["labels"])
        positives += int(((labels >= 0) & (labels < 10)).sum())
        objects += len(target["labels"])
    assert positives > 0
    assert stats["foreground_fraction"] == pytest.approx(positives / (6 * len(anchors)))
    assert stats["objects_per_image"] == pytest.approx(objects / 6)


def test_fewer_digits_per_image_lower_the_foreground_fraction():
    fractions = [
        foreground_statistics(imbalance_config(SETTINGS[name]), num_images=20)["foreground_fraction"]
        for name in ("fg2", "fg0.5", "fg0.25", "fg0.1")
    ]
    assert fractions == sorted(fractions, reverse=True)
    assert 0.015 < fractions[0] < 0.035 and fractions[-1] < 0.002


def test_imbalance_runner_records_setting_fraction_and_curve_and_resumes(fast_config, tmp_path):
    fast_config.train.max_steps = 2
    fast_config.train.lr_schedule = "step"
    sparse = type(fast_config).from_dict(fast_config.to_dict())
    sparse.data.min_digits = sparse.data.max_digits = 1
    settings = {"dense": fast_config, "sparse": sparse}
    rows = IMBALANCE_ROWS[:1]
    first = run_grid(rows, [0], tmp_path / "grid", fast_config, (0, 2), settings, (0.5, 1.0), 20)
    assert [r["setting"] for r in first] == ["dense"]  # shard 0 of 2 takes every other run
    second = run_grid(rows, [0], tmp_path / "grid", fast_config, (0, 1), settings, (0.5, 1.0), 20)
    assert [r["setting"] for r in second] == ["sparse"]
    lines = [json.loads(x) for x in (tmp_path / "grid" / "results.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in lines] == ["dense", "sparse"]
    for line in lines:
        assert [p["step"] for p in line["curve"]] == [1, 2]
        assert line["curve"][-1]["AP"] == line["AP"]
        assert line["cpu_seconds_per_step"] > 0 and line["steps"] == 2
    assert lines[1]["foreground_fraction"] < lines[0]["foreground_fraction"]
    expected = foreground_statistics(fast_config, 20)["foreground_fraction"]
    assert lines[0]["foreground_fraction"] == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "grid" / "sparse" / "steps2" / "ce" / "seed0" / "curve.jsonl").exists()
    assert run_grid(rows, [0], tmp_path / "grid", fast_config, (0, 1), settings, (0.5, 1.0), 20) == []
