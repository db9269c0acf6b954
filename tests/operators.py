"""The three operators as one table, so that every table-driven test runs for each of them.

An Operator knows its public function, its float64 reference, its target forms and how to lay
out the raw op's positional arguments (the schemas in csrc/focal_loss.cpp differ only in the
scalars: the softmax loss has no scalar alpha, FL* has beta).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from helpers import make_labels, make_logits, make_probabilities, make_soft_targets

import focal_loss_ext as fl
from focal_loss_ext._ops import OPMATH_LOSS

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def make_class_labels(rows_shape, classes, device, ignore_index=-100, p_ignore=0.15):
    """Softmax targets: a class in [0, C) per row, some rows ignore_index."""
    labels = torch.randint(0, classes, rows_shape)
    labels[torch.rand(rows_shape) < p_ignore] = ignore_index
    return labels.to(device)


@dataclass(frozen=True)
class Operator:
    name: str  # the public function's and the torch.ops operator's name
    fn: Callable
    reference: Callable
    per_row: bool  # one loss per row (softmax) instead of one per element
    forms: tuple[str, ...]  # target forms, see targets()
    ignore_index: int
    scalar_alpha: bool = True  # takes a float alpha (the sigmoid losses)
    takes_beta: bool = False  # FL*

    def __str__(self) -> str:
        return self.name

    @property
    def op(self):
        return getattr(torch.ops.focal_loss_ext, self.name)

    def targets(self, form: str, shape, dtype, device):
        """'labels' / 'smoothed labels': integer; 'float': soft targets; 'probabilities': rows summing to 1."""
        if form == "float":
            return make_soft_targets(shape, dtype, device)
        if form == "probabilities":
            return make_probabilities(shape, dtype, device)
        if self.per_row:
            return make_class_labels(shape[:-1], shape[-1], device, self.ignore_index)
        return make_labels(shape[:-1], shape[-1], device, self.ignore_index)

    def raw_args(self, x, t, *, alpha=None, weight=None, normalizer=None, gamma=2.0, beta=0.0, reduction="sum",
                 host_scale=1.0, label_smoothing=0.0, compute_grad=True, scalar_alpha=0.25,
                 opmath_loss=False):  # fmt: skip
        """Positional arguments of the raw operator; opmath_loss asks for the loss in opmath."""
        scalars = [scalar_alpha] if self.scalar_alpha else []
        scalars.append(gamma)
        if self.takes_beta:
            scalars.append(beta)
        code = REDUCTION_CODES[reduction] + (OPMATH_LOSS if opmath_loss else 0)
        scalars += [host_scale, label_smoothing, self.ignore_index, code, compute_grad]
        return (x, t, alpha, weight, normalizer, *scalars)


SIGMOID = Operator(
    "sigmoid_focal_loss",
    fl.sigmoid_focal_loss,
    fl.sigmoid_focal_loss_reference,
    per_row=False,
    forms=("float", "labels"),
    ignore_index=-1,
)
STAR = Operator(
    "sigmoid_focal_loss_star",
    fl.sigmoid_focal_loss_star,
    fl.sigmoid_focal_loss_star_reference,
    per_row=False,
    forms=("float", "labels"),
    ignore_index=-1,
    takes_beta=True,
)
SOFTMAX = Operator(
    "softmax_focal_loss",
    fl.softmax_focal_loss,
    fl.softmax_focal_loss_reference,
    per_row=True,
    forms=("labels", "smoothed labels", "probabilities"),
    ignore_index=-100,
    scalar_alpha=False,
)
OPERATORS = (SIGMOID, STAR, SOFTMAX)


def fvcore_star(inputs, targets, alpha, gamma, reduction="none"):
    """fvcore.nn.sigmoid_focal_loss_star's definition, restated (fvcore is not a dependency)."""
    loss = -F.logsigmoid(gamma * inputs * (2 * targets - 1)) / gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def same_dtype_reference(operator: Operator, x, t, **kw):
    """The reference in the inputs' dtype (PyTorch eager): the yardstick for half precision."""
    kw = {k: (v.to(x.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    return operator.reference(x, t.to(x.dtype) if t.is_floating_point() else t, **kw)


def sample_inputs(operator: Operator, shape, dtype, device, form, requires_grad=True):
    x = make_logits(shape, dtype, device, requires_grad=requires_grad)
    return x, operator.targets(form, shape, dtype, device)
