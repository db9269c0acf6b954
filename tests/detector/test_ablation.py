import json

import pytest
import torch

from detector.ablation import GRID, run_grid, select_rows
from detector.losses import ohem_selection

K = 3  # classes; label 3 is background, -1 ignored


def test_ohem_keeps_the_highest_loss_anchors_that_survive_nms():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [80, 80, 90, 90.0]]
    )
    loss = torch.tensor([[5.0, 6.0, 1.0, 4.0, 3.0, 9.0]])
    labels = torch.tensor([[3, 3, 0, 3, 1, -1]])
    # Anchor 0 overlaps anchor 1 (IoU 0.91 > 0.7) with less loss; anchor 5 is ignored.
    selected = ohem_selection(loss, labels, boxes, K, num_keep=3)
    assert selected[0].nonzero().flatten().tolist() == [1, 3, 4]
    # A looser NMS threshold lets the duplicate through.
    selected = ohem_selection(loss, labels, boxes, K, num_keep=3, nms_threshold=0.95)
    assert selected[0].nonzero().flatten().tolist() == [0, 1, 3]


def test_ohem_ratio_caps_positives_and_fills_with_negatives():
    boxes = torch.tensor([[10.0 * i, 0, 10.0 * i + 8, 8] for i in range(8)])
    #                      pos  pos  neg  pos  neg  neg  neg  neg
    labels = torch.tensor([[0, 2, 3, 1, 3, 3, 3, 3]])
    loss = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    # 1:3 of 4 -> one positive (the hardest) and three negatives (the hardest).
    selected = ohem_selection(loss, labels, boxes, K, num_keep=4, negatives_per_positive=3)
    assert selected[0].nonzero().flatten().tolist() == [0, 2, 4, 5]
    # Room for 8: two positives (8 / 4), and the five negatives that exist (six allowed).
    selected = ohem_selection(loss, labels, boxes, K, num_keep=8, negatives_per_positive=3)
    assert selected[0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 7]
    # One positive only: three negatives with it, though there is room for more.
    one = torch.where(torch.arange(8) == 3, labels, torch.full_like(labels, K))
    selected = ohem_selection(loss, one, boxes, K, num_keep=8, negatives_per_positive=3)
    assert selected[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    # Without the ratio the top 4 by loss, whatever their label.
    selected = ohem_selection(loss, labels, boxes, K, num_keep=4)
    assert selected[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    # Per image: a second image with other losses picks its own anchors.
    two = ohem_selection(torch.cat([loss, loss.flip(1)]), labels.repeat(2, 1), boxes, K, 4, 3)
    assert two[1].nonzero().flatten().tolist() == [3, 5, 6, 7]


def test_grid_has_the_papers_rows():
    names = [row.name for row in GRID]
    assert len(names) == len(set(names)) == 19
    assert [r.model["focal_alpha"] for r in select_rows(["a"])] == [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]
    assert [r.name for r in select_rows(["d-*"])] == ["d-ohem128", "d-ohem128-1:3", "d-ohem512", "d-ohem512-1:3"]


def test_runner_writes_one_line_per_run_and_resume_skips_finished_runs(fast_config, tmp_path):
    tiny_config = fast_config
    tiny_config.train.max_steps = 2
    tiny_config.train.log_every = 1
    rows = select_rows(["a-alpha0.25", "b-gamma2"])
    results = tmp_path / "grid" / "results.jsonl"

    first = run_grid(rows[:1], [0], tmp_path / "grid", tiny_config)
    assert [r["row"] for r in first] == ["a-alpha0.25"]
    line = json.loads(results.read_text())
    assert line["steps"] == 2 and line["images"] == 2 * tiny_config.train.batch_size and 0 <= line["AP"] <= 1

    second = run_grid(rows, [0], tmp_path / "grid", tiny_config)  # interrupted grid restarted
    assert [r["row"] for r in second] == ["b-gamma2"]
    assert second[0]["overrides"] == {"focal_gamma": 2.0, "focal_alpha": 0.25}
    assert run_grid(rows, [0], tmp_path / "grid", tiny_config) == []
    assert [json.loads(x)["row"] for x in results.read_text().splitlines()] == ["a-alpha0.25", "b-gamma2"]


def test_ohem_loss_is_plain_cross_entropy_over_the_selected_anchors():
    pytest.importorskip("focal_loss_ext._C", reason="needs the built extension")
    from detector.losses import ohem_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 8, K, requires_grad=True)
    labels = torch.tensor([[0, 3, 3, -1, 2, 3, 3, 1], [3, 3, 1, 3, 3, 0, -1, 3]])
    anchors = torch.tensor([[10.0 * i, 0, 10.0 * i + 8, 8] for i in range(8)])
    normalizer = torch.tensor(5.0)
    loss = ohem_cross_entropy(logits, labels, anchors, normalizer, num_keep=3)
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), K + 1)[..., :K].float()
    per_anchor = torch.nn.functional.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").sum(-1)
    per_anchor = per_anchor.masked_fill(labels < 0, -1.0)  # never selected
    top = per_anchor.detach().topk(3, dim=1).indices  # the anchors do not overlap: NMS drops none
    expected = per_anchor.gather(1, top).sum() / normalizer
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad[labels < 0] == 0).all() and (logits.grad.abs().sum(-1) > 0).sum() == 6


def test_ohem_without_overlapping_boxes_skips_nms_and_agrees_with_it(monkeypatch):
    import detector.losses
    from detector.anchors import AnchorGenerator

    # RetinaNet's anchors: no two overlap above IoU 0.7, so NMS at 0.7 keeps them all.
    anchors = torch.cat(AnchorGenerator((8, 16, 32, 64, 128), 2.0)([(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]))
    assert not detector.losses._any_overlap_above(anchors, 0.7)
    assert detector.losses._any_overlap_above(anchors, 0.5)
    torch.manual_seed(0)
    loss = torch.rand(2, len(anchors))
    labels = torch.randint(-1, K + 1, (2, len(anchors)))
    fast = [ohem_selection(loss, labels, anchors, K, 128, ratio) for ratio in (0.0, 3.0)]
    monkeypatch.setattr(detector.losses, "_any_overlap_above", lambda boxes, threshold: True)
    for ratio, selected in zip((0.0, 3.0), fast):
        assert torch.equal(selected, ohem_selection(loss, labels, anchors, K, 128, ratio))
    assert fast[0].sum() == 2 * 128
