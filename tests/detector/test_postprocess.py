import torch

from detector.box_coder import BoxCoder
from detector.postprocess import PostProcessor


def grid_anchors(count: int, side: float = 10.0, gap: float = 20.0) -> torch.Tensor:
    """`count` disjoint square anchors along a row (no NMS interaction between them)."""
    x0 = torch.arange(count, dtype=torch.float32) * gap
    return torch.stack([x0, torch.zeros(count), x0 + side, torch.full((count,), side)], dim=1)


def run(processor, logits, anchors, size=(20, 100000)):
    deltas = torch.zeros(1, anchors.shape[0], 4)
    return processor([logits[None]], [deltas], [anchors], [size])[0]


def test_score_threshold():
    logits = torch.full((4, 3), -10.0)
    logits[1, 2] = 0.0  # score 0.5
    logits[3, 0] = -2.9  # score 0.052
    logits[2, 1] = -3.0  # score 0.047, below 0.05
    result = run(PostProcessor(BoxCoder()), logits, grid_anchors(4))
    assert sorted(zip(result["labels"].tolist(), result["boxes"][:, 0].tolist())) == [(0, 60.0), (2, 20.0)]


def test_topk_per_level_keeps_the_best():
    logits = torch.linspace(-2.0, 2.0, 50).reshape(50, 1)
    result = run(PostProcessor(BoxCoder(), topk_per_level=5), logits, grid_anchors(50))
    assert result["scores"].numel() == 5
    torch.testing.assert_close(result["scores"], torch.sigmoid(logits[-5:, 0]).flip(0))


def test_nms_is_per_class_and_at_most_100_detections_remain():
    anchors = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]])
    logits = torch.tensor([[3.0, -9.0], [2.0, -9.0], [-9.0, 1.0]])  # two overlapping class-0 boxes, one class-1
    result = run(PostProcessor(BoxCoder()), logits, anchors)
    assert sorted(result["labels"].tolist()) == [0, 1]
    torch.testing.assert_close(result["scores"].max(), torch.sigmoid(torch.tensor(3.0)))

    many = run(PostProcessor(BoxCoder()), torch.ones(500, 1), grid_anchors(500))
    assert many["boxes"].shape == (100, 4)


def test_boxes_are_clipped_to_the_image():
    anchors = torch.tensor([[-5.0, -5.0, 30.0, 30.0]])
    result = run(PostProcessor(BoxCoder()), torch.ones(1, 1), anchors, size=(20, 25))
    assert result["boxes"].tolist() == [[0.0, 0.0, 25.0, 20.0]]
