import torch

from detector.matcher import IGNORE, Matcher

K = 10


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_thresholds_and_ignore_band():
    # Against the object [0, 0, 10, 10] an anchor [0, 0, 10, h] has IoU h / 10.
    anchors = boxes([0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.5], [0, 0, 10, 4.0], [0, 0, 10, 3.9], [50, 50, 60, 60])
    labels, matched = Matcher(K)(anchors, boxes([0, 0, 10, 10]), torch.tensor([7]))
    assert labels.tolist() == [7, 7, IGNORE, IGNORE, K, K]
    assert matched[:2].tolist() == [0, 0]


def test_each_objects_best_anchor_is_positive_even_below_threshold():
    # The object overlaps anchor 1 best, with IoU 0.25 only; anchor 0 has 0.11.
    anchors = boxes([100, 100, 110, 110], [100, 100, 115, 115], [0, 0, 10, 10])
    labels, matched = Matcher(K)(anchors, boxes([0, 0, 10, 10], [100, 100, 130, 130]), torch.tensor([2, 5]))
    assert labels.tolist() == [K, 5, 2]
    assert matched.tolist() == [0, 1, 0]


def test_ties_for_best_anchor_are_all_positive():
    anchors = boxes([0, 0, 10, 10], [20, 0, 30, 10], [0, 50, 10, 60])
    labels, _ = Matcher(K)(anchors, boxes([0, 0, 30, 10]), torch.tensor([4]))
    assert labels.tolist() == [4, 4, K]


def test_every_object_gets_a_positive_anchor():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=generator) * 100
    anchors = torch.cat([xy, xy + 4 + torch.rand(200, 2, generator=generator) * 30], 1)
    gxy = torch.rand(6, 2, generator=generator) * 100
    objects = torch.cat([gxy, gxy + 2 + torch.rand(6, 2, generator=generator) * 40], 1)
    labels, matched = Matcher(K)(anchors, objects, torch.arange(6))
    for index in range(6):
        assert ((labels == index) & (matched == index)).any()


def test_no_objects_means_all_background():
    labels, _ = Matcher(K)(boxes([0, 0, 10, 10], [5, 5, 20, 20]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert labels.tolist() == [K, K]
