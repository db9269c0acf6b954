import pytest
import torch

from detector.coco import detections_to_coco, ground_truth_dict
from detector.data import DigitCanvas
from detector.evaluate import METRIC_NAMES, coco_metrics


@pytest.fixture
def dataset(tiny_config):
    tiny_config.data.num_test_images = 12
    return DigitCanvas("test", tiny_config.data)


def test_ground_truth_as_predictions_gives_ap_one(dataset):
    ground_truth = ground_truth_dict(dataset)
    assert min(a["id"] for a in ground_truth["annotations"]) == 1
    assert min(i["id"] for i in ground_truth["images"]) == 1
    detections = []
    for index in range(len(dataset)):
        target = dataset[index][1]
        scores = torch.ones(len(target["labels"]))
        detections.append({"boxes": target["boxes"], "labels": target["labels"], "scores": scores})
    metrics = coco_metrics(ground_truth, detections_to_coco(detections, [i + 1 for i in range(len(dataset))]))
    for name in METRIC_NAMES:
        assert metrics[name] in (pytest.approx(1.0), -1.0), name  # -1: no object of that size
    assert metrics["AP"] == pytest.approx(1.0)


def test_no_detection_at_all_gives_zeros(dataset):
    assert coco_metrics(ground_truth_dict(dataset), []) == {name: 0.0 for name in METRIC_NAMES}


def test_evaluate_reads_the_folder_train_wrote(fast_config, tmp_path):
    from detector.evaluate import main
    from detector.train import train

    tiny_config = fast_config
    tiny_config.train.max_steps = 1
    train(tiny_config)
    run = tiny_config.train.output_dir
    record = main(["--output-dir", run, "--num-plot-images", "1"])
    assert record["checkpoint"] == f"{run}/checkpoint.pt" and record["step"] == 1
    assert (tmp_path / "run" / "eval" / "metrics.json").exists()
    # A checkpoint file elsewhere: results go beside it.
    moved = tmp_path / "elsewhere" / "model.pt"
    moved.parent.mkdir()
    (tmp_path / "run" / "checkpoint.pt").rename(moved)
    assert main(["--checkpoint", str(moved), "--num-plot-images", "1"])["step"] == 1
    assert (moved.parent / "eval" / "metrics.json").exists()
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["--output-dir", run])
