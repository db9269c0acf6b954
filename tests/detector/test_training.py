import json

import torch

from detector.checkpoint import load_checkpoint
from detector.data import DigitCanvas, collate
from detector.model import build_model
from detector.train import train


def test_a_few_iterations_on_two_images_drive_the_loss_down(tiny_config):
    images, targets = collate([DigitCanvas("train", tiny_config.data)[i] for i in range(2)])
    torch.manual_seed(0)
    model = build_model(tiny_config.model, loss="torchvision")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        losses = model(images, targets)
        loss = losses["loss_cls"] + losses["loss_box"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) < 0.5 * sum(history[:3])


def test_resume_from_checkpoint_continues_exactly(tiny_config, tmp_path):
    tiny_config.train.loss = "torchvision"
    tiny_config.train.max_steps = 4
    tiny_config.train.output_dir = str(tmp_path / "straight")
    train(tiny_config)

    tiny_config.train.output_dir = str(tmp_path / "resumed")
    tiny_config.train.stop_at_step = 2
    assert train(tiny_config)["step"] == 2
    tiny_config.train.stop_at_step = 0
    assert train(tiny_config)["step"] == 4

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name

    def losses(run):
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss_cls"], r["loss_box"]) for r in map(json.loads, rows)]

    assert losses("straight") == losses("resumed")
    assert (tmp_path / "resumed" / "loss_curve.png").exists()
