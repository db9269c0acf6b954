import math

import torch

from detector.head import RetinaNetHead


def test_init_follows_the_paper():
    torch.manual_seed(0)
    head = RetinaNetHead(channels=64, num_anchors=9, num_classes=10, num_convs=4, norm="gn", prior_prob=0.01)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 4 + 2
    for conv in convs:
        assert abs(conv.weight.std().item() - 0.01) < 0.001
        assert abs(conv.weight.mean().item()) < 0.001
    for conv in convs[:-2] + [head.box_deltas]:
        assert torch.count_nonzero(conv.bias) == 0
    torch.testing.assert_close(head.cls_logits.bias, torch.full((90,), -math.log(99.0)))


def test_initial_foreground_probability_is_about_pi():
    torch.manual_seed(0)
    head = RetinaNetHead(channels=16, num_anchors=9, num_classes=10, num_convs=2)
    logits, deltas = head([torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)])
    assert [x.shape for x in logits] == [torch.Size((2, 576, 10)), torch.Size((2, 144, 10))]
    assert [x.shape for x in deltas] == [torch.Size((2, 576, 4)), torch.Size((2, 144, 4))]
    assert abs(torch.sigmoid(logits[0]).mean().item() - 0.01) < 0.002
