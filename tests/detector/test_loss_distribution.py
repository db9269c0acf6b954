import math

import pytest
import torch

from detector.loss_distribution import cumulative_loss, focal_terms, fraction_holding, hardest_share

# p_t of four samples; their cross entropies are -log p_t.
P_T = torch.tensor([0.9, 0.5, 0.1, 0.99], dtype=torch.float64)


def test_focal_terms_match_the_formula():
    for gamma in (0.0, 0.5, 1.0, 2.0):
        expected = [-((1 - p) ** gamma) * math.log(p) for p in P_T.tolist()]
        torch.testing.assert_close(focal_terms(P_T.log(), gamma), torch.tensor(expected, dtype=torch.float64))


def test_cumulative_share_sorts_easiest_first_and_ends_at_one():
    fraction, share = cumulative_loss(P_T.log(), 0.0)
    ce = sorted(-math.log(p) for p in P_T.tolist())  # 0.01005, 0.10536, 0.69315, 2.30259
    expected = [sum(ce[: i + 1]) / sum(ce) for i in range(4)]
    torch.testing.assert_close(fraction, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(share, torch.tensor(expected, dtype=torch.float64))


def test_gamma_concentrates_the_loss_on_the_hardest_sample():
    # The hardest sample (p_t = 0.1) holds 2.30259 / 3.11115 = 74.0 % of the cross
    # entropy and 1.86509 / (1.86509 + 0.17329 + 0.00105 + 1e-6) = 91.4 % at gamma 2.
    assert hardest_share(P_T.log(), 0.0, 0.25) == pytest.approx(0.7401, abs=1e-4)
    assert hardest_share(P_T.log(), 2.0, 0.25) == pytest.approx(0.9145, abs=1e-4)
    assert fraction_holding(P_T.log(), 2.0, 0.5) == 0.25
    assert fraction_holding(P_T.log(), 0.0, 0.9) == 0.5
