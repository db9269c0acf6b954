"""Two gloo processes, as torchrun would start them, agree on the positive count and the weights."""

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from detector import distributed
from detector.config import Config
from detector.data import DigitCanvas
from detector.losses import positive_normalizer
from detector.matcher import count_positives
from detector.model import build_model
from detector.train import train, training_batch


def _worker(rank: int, world_size: int, port: int, folder: str, config_dict: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    config = Config.from_dict(config_dict)
    distributed.setup("cpu")
    dataset = DigitCanvas("train", config.data)
    model = build_model(config.model, loss="torchvision")
    _, targets = training_batch(dataset, 0, rank, world_size, config.train.batch_size)
    anchors = torch.cat(model.predict(torch.zeros(1, 3, 128, 128))[2])
    labels, _ = model.assign(anchors, targets)
    count = count_positives(labels, config.model.num_classes)
    normalizer = positive_normalizer(count)

    summary = train(config)  # joins the same process group, runs DDP, then tears it down
    result = {"count": int(count), "normalizer": float(normalizer), "step": summary["step"]}
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_share_the_positive_count(tiny_config, tmp_path):
    tiny_config.train.loss = "torchvision"
    tiny_config.train.max_steps = 2
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), tiny_config.to_dict()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["count"] != ranks[1]["count"]  # different images on each process...
    mean = (ranks[0]["count"] + ranks[1]["count"]) / 2
    assert ranks[0]["normalizer"] == ranks[1]["normalizer"] == mean  # ...one shared normalizer
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").exists()  # written by rank 0 before both left the group
