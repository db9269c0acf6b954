"""Checkpoints holding everything a resumed run needs to continue exactly.

Model and optimizer state, the step (which also fixes the next training images,
see `detector.train`), the training seconds spent so far (the wall-clock part of
the schedule) and the config. Written to a temporary file and renamed, so a run
killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from detector.config import Config


def save_checkpoint(path: str | Path, model, optimizer, step: int, train_seconds: float, config: Config) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "train_seconds": train_seconds,
        "config": config.to_dict(),
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def load_for_inference(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, its Config, its step). Needs no loss implementation."""
    from detector.model import build_model

    state = load_checkpoint(path, device)
    config = Config.from_dict(state["config"])
    model = build_model(config.model, loss="torchvision")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, state["step"]
