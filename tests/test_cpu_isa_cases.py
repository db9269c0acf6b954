"""The main case tables once more under every CPU build (portable, AVX2, AVX-512) this machine
supports other than the default one, which the original modules already run: the tests imported
below are collected here again, each once per build, through the autouse fixture `isa`."""

import pytest
import test_backward
import test_extremes
import test_forward
import test_operators
import test_softmax_focal_loss
import torch
from helpers import EMULATED_CUDA, cpu_isa

if EMULATED_CUDA:  # that flavour's CPU kernels are the CUDA kernels: no CPU builds to choose from
    pytest.skip("the emulated-CUDA build has no CPU instruction-set builds", allow_module_level=True)

ops = torch.ops.focal_loss_ext
DEFAULT_ISA = ops._cpu_isa()
OTHER_ISAS = [isa for isa in ops._cpu_isas_supported() if isa != DEFAULT_ISA]


@pytest.fixture(autouse=True, params=OTHER_ISAS or [pytest.param(DEFAULT_ISA, marks=pytest.mark.skip("one build"))])
def isa(request):
    with cpu_isa(request.param):
        yield request.param


# The case tables of the main modules, once more per build.
test_float_targets = test_forward.test_float_targets_match_torchvision
test_integer_labels = test_forward.test_integer_labels_match_reference
test_every_gamma_and_alpha = test_forward.test_every_gamma_and_alpha
test_all_options_together = test_forward.test_all_options_together
test_non_contiguous_inputs = test_forward.test_non_contiguous_inputs
test_grad_with_random_grad_output = test_backward.test_grad_with_random_grad_output
test_grad_of_reduced_loss = test_backward.test_grad_of_reduced_loss
test_float16_gradient_does_not_underflow = test_backward.test_float16_gradient_does_not_underflow
test_extreme_logits = test_extremes.test_extreme_logits_finite_and_right
test_half_precision_extremes = test_extremes.test_half_precision_extremes
test_nan_logits_give_nan = test_extremes.test_nan_logits_give_nan
test_every_operator_matches_reference = test_operators.test_loss_and_grad_match_reference
test_softmax_rows_of_any_length = test_softmax_focal_loss.test_rows_of_any_length
