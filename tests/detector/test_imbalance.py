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
        shares = [line["curve"][-1][f"share_{k}"] for k in ("positive", "easy", "medium", "hard")]
        assert sum(shares) == pytest.approx(1, abs=1e-4) and min(shares) >= 0
    assert lines[1]["foreground_fraction"] < lines[0]["foreground_fraction"]
    expected = foreground_statistics(fast_config, 20)["foreground_fraction"]
    assert lines[0]["foreground_fraction"] == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "grid" / "sparse" / "steps2" / "ce" / "seed0" / "curve.jsonl").exists()
    assert run_grid(rows, [0], tmp_path / "grid", fast_config, (0, 1), settings, (0.5, 1.0), 20) == []


def test_report_pairs_gains_by_seed_and_reads_convergence_from_the_curve(tmp_path):
    from detector.ablation_report import (
        IMBALANCE_END,
        IMBALANCE_START,
        converged,
        gains,
        imbalance_report,
        last_quarter_change,
    )

    steps = SETTINGS["fg2"].steps

    def line(row, seed, ap, ap75=None):
        curve = [{"step": steps * k // 4, "AP": ap - 0.01 * (4 - k), "AP50": ap} for k in (1, 2, 3, 4)]
        if ap75 is not None:
            curve[2]["AP"] = ap75
        curve[3].update(share_positive=0.5, share_easy=0.1 * seed, share_medium=0.3, share_hard=0.2 - 0.1 * seed)
        return {
            "setting": "fg2",
            "row": row,
            "seed": seed,
            "steps": steps,
            "AP": ap,
            "AP50": ap,
            "AP75": ap,
            "cpu_seconds_per_step": 0.07,
            "overrides": {},
            "curve": curve,
            "foreground_fraction": 0.0236,
        }

    runs_dir, figures = tmp_path / "runs", tmp_path / "figures"
    runs_dir.mkdir()
    figures.mkdir()
    lines = [line("ce", 0, 0.50), line("ce", 1, 0.40), line("fl-gamma2", 0, 0.55, ap75=0.50), line("fl-gamma2", 2, 0.9)]
    for row, ap in (("ce", 0.1), ("fl-gamma2", 0.3)):  # a longer budget
        lines.append({**line(row, 2, ap), "steps": 2 * steps, "images": 8 * steps})
    (runs_dir / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (runs_dir / "foreground.json").write_text(
        json.dumps({"fg2": {"foreground_fraction": 0.0236, "anchors_per_image": 3069, "positives_per_image": 72.4}})
    )
    report = tmp_path / "report.md"
    report.write_text(f"before\n{IMBALANCE_START}\nold\n{IMBALANCE_END}\nafter\n")
    text = imbalance_report(runs_dir, report, figures)

    from detector.ablation_report import imbalance_runs

    runs = imbalance_runs(figures / "imbalance.jsonl")
    assert gains(runs, "fg2", "fl-gamma2") == [pytest.approx(0.05)]  # seed 0 only: seed 2 has no CE run
    assert last_quarter_change(runs[("fg2", "fl-gamma2")][0]) == pytest.approx(0.05)
    # The best loss here (fl-gamma2) gained 5 and 1 AP over its last quarter: 3 on average.
    assert not converged(runs, "fg2") and converged(runs, "fg2", tolerance=0.031) and not converged(runs, "fg0.1")
    assert "| fl-gamma2 | 2 | 72.5 ± 24.7 |" in text and "| +5.0 | +" in text
    assert "| fg2 | 8-12 | 0.0236 | 72.4 of 3069 |" in text and "| 4 / 18 |" in text
    assert "| 69.5 / 70.5 / 69.5 / 72.5 | 50 % / 10 % / 10 % |" in text  # fl-gamma2: seeds 0 and 2
    assert f"| fg2 | ce | {2 * steps} x 4 | 1 | 10.0 | – |" in text  # the longer runs, in a table of their own
    assert f"| fg2 | fl-gamma2 | {2 * steps} x 4 | 1 | 30.0 | +20.0 |" in text
    body = report.read_text()
    assert body.startswith("before\n") and body.endswith("after\n") and "old" not in body
    assert (figures / "imbalance_gain.png").exists() and (figures / "imbalance_curves.png").exists()


def test_gradient_shares_split_the_push_on_the_logits_by_element_kind(fast_config):
    from detector.ablation import gradient_shares
    from detector.data import collate
    from detector.model import build_model

    torch.manual_seed(0)
    images, targets = collate([DigitCanvas("train", fast_config.data)[i] for i in range(2)])
    shares = {}
    for gamma in (0.0, 2.0):
        fast_config.model.focal_gamma = gamma
        model = build_model(fast_config.model, "torchvision")
        torch.nn.init.normal_(model.head.cls_logits.bias, -6.0, 2.0)  # some easy, some hard negatives
        shares[gamma] = gradient_shares(model, images, targets)
        kinds = [shares[gamma][k] for k in ("positive", "easy", "medium", "hard")]
        assert sum(kinds) == pytest.approx(1, abs=1e-4) and min(kinds) >= 0
        assert 0.5 < shares[gamma]["easy_elements"] < 1
    # The focal term moves the push from the easy negatives to the rest.
    assert shares[2.0]["easy"] < 0.2 * shares[0.0]["easy"]


def test_a_run_resumed_past_a_scoring_point_is_not_scored_there(fast_config, tmp_path):
    from detector.ablation import KeptImages, run_one
    from detector.train import train

    fast_config.train.max_steps = 2
    train(fast_config)  # interrupted after its last step, before any scoring
    test_images = KeptImages(DigitCanvas("test", fast_config.data))
    result = run_one(fast_config, IMBALANCE_ROWS[0], DigitCanvas("train", fast_config.data), test_images, (0.5, 1.0))
    assert [p["step"] for p in result["curve"]] == [2]
    assert result["cpu_seconds_per_step"] is None  # no step trained by this call
