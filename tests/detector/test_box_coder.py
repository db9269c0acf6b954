import torch

from detector.box_coder import BoxCoder


def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(100, 2, generator=generator) * 100
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(100, 2, generator=generator) * 60], dim=1)
    boxes = torch.rand(100, 2, generator=generator) * 100
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(100, 2, generator=generator) * 80], dim=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, rtol=1e-5, atol=1e-4)


def test_zero_deltas_decode_to_the_anchor_and_huge_ones_stay_finite():
    coder = BoxCoder()
    anchors = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(coder.decode(anchors, torch.zeros(1, 4)), anchors)
    assert torch.isfinite(coder.decode(anchors, torch.full((1, 4), 1e4))).all()
