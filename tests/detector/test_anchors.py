import pytest
import torch

from detector.anchors import AnchorGenerator

STRIDES = (8, 16, 32, 64, 128)


def test_nine_anchors_per_position_on_every_level():
    generator = AnchorGenerator(STRIDES, size_multiple=4.0)
    sizes = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2)]
    anchors = generator(sizes)
    assert generator.num_anchors_per_position == 9
    assert [a.shape for a in anchors] == [torch.Size((h * w * 9, 4)) for h, w in sizes]


@pytest.mark.parametrize("multiple", [4.0, 2.0])
def test_sizes_and_aspect_ratios_follow_the_paper(multiple):
    anchors = AnchorGenerator(STRIDES, size_multiple=multiple)([(2, 3)] * 5)
    for stride, level in zip(STRIDES, anchors):
        cell = level[:9]  # the nine anchors of position (0, 0)
        width, height = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        expected_sides = [multiple * stride * 2 ** (i / 3) for i in range(3)]
        torch.testing.assert_close(torch.sqrt(width * height), torch.tensor(expected_sides).repeat_interleave(3))
        torch.testing.assert_close(height / width, torch.tensor([0.5, 1.0, 2.0]).repeat(3))
        centres = (level[:, :2] + level[:, 2:]) / 2
        assert torch.allclose(centres[0], torch.tensor([stride / 2, stride / 2]))
        # Positions run x-fastest: the 10th anchor is at cell (y=0, x=1).
        assert torch.allclose(centres[9], torch.tensor([1.5 * stride, stride / 2]))
