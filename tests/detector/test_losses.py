import pytest
import torch

from detector.data import DigitCanvas, collate
from detector.losses import positive_normalizer, torchvision_focal_loss
from detector.matcher import IGNORE
from detector.model import RetinaNet, build_model


def fused_available() -> bool:
    try:
        import focal_loss_ext._C  # noqa: F401  (imports the package too)
    except ImportError:
        return False
    return True


def test_ignored_anchors_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 3)
    labels = torch.tensor([[0, 3, IGNORE, 2, 3, 1], [3, 3, 3, IGNORE, 0, 3]])
    loss = torchvision_focal_loss()(logits, labels, torch.tensor(4.0))
    changed = logits.clone()
    changed[0, 2] = 50.0
    changed[1, 3] = -50.0
    assert torch.equal(loss, torchvision_focal_loss()(changed, labels, torch.tensor(4.0)))

    keep = labels >= 0
    one_hot = torch.nn.functional.one_hot(labels[keep], 4)[:, :3].float()
    p = torch.sigmoid(logits[keep])
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    alpha_t = 0.25 * one_hot + 0.75 * (1 - one_hot)
    by_hand = -(alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).sum() / 4
    torch.testing.assert_close(loss, by_hand)


def test_normalizer_is_at_least_one():
    assert positive_normalizer(torch.tensor(0)).item() == 1.0
    assert positive_normalizer(torch.tensor(7)).item() == 7.0


@pytest.mark.skipif(
    not fused_available(), reason="focal_loss_ext is not built (python -c 'import focal_loss_ext._C' fails)"
)
def test_fused_and_torchvision_give_the_same_loss_and_gradients(tiny_config):
    images, targets = collate([DigitCanvas("train", tiny_config.data)[i] for i in range(2)])
    torch.manual_seed(0)
    fused = build_model(tiny_config.model, loss="fused")
    reference = build_model(tiny_config.model, loss="torchvision")
    reference.load_state_dict(fused.state_dict())
    results = []
    for model in (fused, reference):
        losses = model(images, targets)
        (losses["loss_cls"] + losses["loss_box"]).backward()
        results.append((losses, {name: p.grad for name, p in model.named_parameters()}))
    (fused_losses, fused_grads), (ref_losses, ref_grads) = results
    assert isinstance(fused, RetinaNet) and fused_losses["num_positive"] == ref_losses["num_positive"]
    torch.testing.assert_close(fused_losses["loss_cls"], ref_losses["loss_cls"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_losses["loss_box"], ref_losses["loss_box"])
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
