"""The rest of the focal-loss family against the pure-PyTorch forms its users run, eager and compiled.

    python benchmarks/family.py              # CUDA if present, else CPU with 2 threads
    python benchmarks/family.py --quick      # small shapes, a few seconds per case
    python benchmarks/family.py --losses quality_focal_loss,gaussian_focal_loss
    python benchmarks/run.py --family ...    # the same, from the main runner

Cases (one loss at the shape its users train):
  softmax_focal_loss       ImageNet-like rows, 1000 classes                     ours vs its reference
  sigmoid_focal_loss_star  RetinaNet-like anchors, 80 classes                   ours vs its reference
  quality_focal_loss       RTMDet dense head, 8 x 8400 x 80, labels + scores    mmdet (dense; indexed)
  varifocal_loss           the same head                                        mmdet (dense)
  gaussian_focal_loss      CenterPoint heatmap, 4 x 10 x 180 x 180              mmdet3d (clip_sigmoid)
  asymmetric_loss          multi-label, 256 x 9605 (Open Images classes)        timm
Each case is a list of implementations; a fused operator is one more entry, named as its case's
`fused`, and every other row of the case then reports how much slower it is.

Prints a Markdown table and writes family-<device>-<date>.jsonl under benchmarks/results/.
Timing as in run.py (benchmarks/timing.py): warm-up, then at least --min-run-time seconds and 5
samples, median and quartiles; compile time excluded (reported as compile_s); peak memory of
one step beyond what was allocated before it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks import baselines, report, timing  # noqa: E402
from focal_loss_ext import (  # noqa: E402
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_reference,
    softmax_focal_loss,
    softmax_focal_loss_reference,
)

GAMMA = 2.0
STAR_GAMMA, STAR_BETA, STAR_ALPHA = 4.0, 0.0, 0.25
QFL_BETA = 2.0
VFL_ALPHA, VFL_GAMMA = 0.75, 2.0
ASL_GAMMA_POS, ASL_GAMMA_NEG, ASL_CLIP = 1.0, 4.0, 0.05  # timm's defaults
MODES = ("forward", "forward+backward")

Inputs = dict  # name -> tensor; "logits" is the leaf that requires grad


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _min_bytes(inputs: Inputs, mode: str) -> int:
    """Logits and targets read once, the gradient written once (forward+backward)."""
    logits = _nbytes(inputs["logits"])
    targets = sum(_nbytes(t) for name, t in inputs.items() if name != "logits" and t.dim() > 0)
    return logits + targets + (logits if mode == "forward+backward" else 0)


@dataclass(frozen=True)
class Impl:
    name: str
    loss: Callable[[Inputs], torch.Tensor]
    compiled: bool = False  # wrapped in torch.compile (static shapes) afresh for every shape


@dataclass(frozen=True)
class Case:
    loss: str
    shapes: dict[str, tuple[tuple[int, ...], ...]]  # "cuda", "cpu", "quick" -> logits shapes
    make_inputs: Callable[[tuple[int, ...], torch.device, torch.Generator], Inputs]
    impls: tuple[Impl, ...]
    fused: str | None = None  # the fused implementation, once it exists: speed-ups are against it
    modes: tuple[str, ...] = ("forward+backward",)
    min_bytes: Callable[[Inputs, str], int] = _min_bytes  # bytes any implementation must move


def eager_and_compiled(name: str, loss: Callable[[Inputs], torch.Tensor]) -> tuple[Impl, Impl]:
    return Impl(f"{name}-eager", loss), Impl(f"{name}-compile", loss, compiled=True)


# Softmax focal loss and FL*: ours against our pure-PyTorch references -------------------------


def _class_rows(shape, device, generator, background_fraction=0.0):
    rows, classes = shape
    logits = torch.randn(rows, classes, generator=generator, device=device)
    labels = torch.randint(0, classes, (rows,), generator=generator, device=device)
    if background_fraction:
        background = torch.rand(rows, generator=generator, device=device) < background_fraction
        labels[background] = classes
    return {"logits": logits.requires_grad_(), "labels": labels}


SOFTMAX = Case(
    "softmax_focal_loss",
    {"cuda": ((10_000, 1000), (100_000, 1000)), "cpu": ((10_000, 1000),), "quick": ((1_000, 1000),)},
    _class_rows,
    (
        Impl("ours", lambda x: softmax_focal_loss(x["logits"], x["labels"], gamma=GAMMA)),
        *eager_and_compiled("pytorch", lambda x: softmax_focal_loss_reference(x["logits"], x["labels"], gamma=GAMMA)),
    ),
    fused="ours",
    modes=MODES,
)

STAR = Case(
    "sigmoid_focal_loss_star",
    {"cuda": ((100_000, 80), (1_000_000, 80)), "cpu": ((100_000, 80),), "quick": ((10_000, 80),)},
    lambda shape, device, generator: _class_rows(shape, device, generator, background_fraction=0.98),
    (
        Impl(
            "ours",
            lambda x: sigmoid_focal_loss_star(x["logits"], x["labels"], STAR_ALPHA, STAR_GAMMA, "mean", beta=STAR_BETA),
        ),
        *eager_and_compiled(
            "pytorch",
            lambda x: sigmoid_focal_loss_star_reference(
                x["logits"], x["labels"], STAR_ALPHA, STAR_GAMMA, "mean", beta=STAR_BETA
            ),
        ),
    ),
    fused="ours",
    modes=MODES,
)


# The soft-target losses: the forms in use (benchmarks/baselines.py) ---------------------------


def _dense_head(shape, device, generator, positive_fraction=0.01):
    """RTMDet-like: (images, anchors, K) logits; 1% of anchors positive with a quality score."""
    images, anchors, classes = shape
    logits = torch.randn(shape, generator=generator, device=device)
    positive = torch.rand(images, anchors, generator=generator, device=device) < positive_fraction
    labels = torch.randint(0, classes, (images, anchors), generator=generator, device=device)
    labels = torch.where(positive, labels, classes)
    scores = torch.rand(images, anchors, generator=generator, device=device) * positive
    return {"logits": logits.requires_grad_(), "labels": labels, "scores": scores}


def _dense_targets(x: Inputs) -> torch.Tensor:
    """What mmdet's dense heads build each step: one-hot(labels) x scores, (images, anchors, K)."""
    classes = x["logits"].shape[-1]
    onehot = F.one_hot(x["labels"], classes + 1)[..., :classes].to(x["logits"].dtype)
    return onehot * x["scores"].unsqueeze(-1)


def _avg_factor(x: Inputs) -> torch.Tensor:
    """RTMDet's normaliser: the sum of the positives' quality scores, at least 1 (no host sync)."""
    return x["scores"].sum().clamp(min=1)


def _qfl_dense(x: Inputs) -> torch.Tensor:
    return baselines.mmdet_quality_focal_loss_dense(x["logits"], _dense_targets(x), QFL_BETA).sum() / _avg_factor(x)


def _qfl_indexed(x: Inputs) -> torch.Tensor:
    """RTMDet's own call: flattened rows, (labels, scores) targets, boolean indexing (a host sync)."""
    logits = x["logits"].reshape(-1, x["logits"].shape[-1])
    rows = baselines.mmdet_quality_focal_loss(logits, x["labels"].reshape(-1), x["scores"].reshape(-1), QFL_BETA)
    return rows.sum() / _avg_factor(x)


def _vfl_dense(x: Inputs) -> torch.Tensor:
    loss = baselines.mmdet_varifocal_loss(x["logits"], _dense_targets(x), VFL_ALPHA, VFL_GAMMA)
    return loss.sum() / _avg_factor(x)


DENSE_HEAD_SHAPES = {"cuda": ((8, 8400, 80),), "cpu": ((8, 8400, 80),), "quick": ((1, 500, 80),)}

QUALITY = Case(
    "quality_focal_loss",
    DENSE_HEAD_SHAPES,
    _dense_head,
    (*eager_and_compiled("mmdet-dense", _qfl_dense), Impl("mmdet-indexed-eager", _qfl_indexed)),
)

VARIFOCAL = Case("varifocal_loss", DENSE_HEAD_SHAPES, _dense_head, eager_and_compiled("mmdet-dense", _vfl_dense))


def _heatmap(shape, device, generator, objects_per_sample=40):
    """CenterPoint-like (B, C, H, W) heatmaps: a Gaussian of CenterNet's sigma = (2r + 1) / 6 per
    object (radius r in [2, 6] cells), peak exactly 1, the element-wise maximum where they overlap."""
    batch, classes, height, width = shape
    logits = torch.randn(shape, generator=generator, device=device) - 4  # a trained head: mostly background
    heatmap = torch.zeros(shape, device=device)
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    for b in range(batch):
        for _ in range(objects_per_sample):
            c, i, j, r = (
                int(torch.randint(high, (1,), generator=generator, device=device))
                for high in (classes, height, width, 5)
            )
            sigma = (2 * (r + 2) + 1) / 6
            blob = torch.exp(-((rows - i) ** 2 + (cols - j) ** 2) / (2 * sigma**2))
            heatmap[b, c] = torch.maximum(heatmap[b, c], blob)
    return {"logits": logits.requires_grad_(), "heatmap": heatmap}


GAUSSIAN = Case(
    "gaussian_focal_loss",
    {"cuda": ((4, 10, 180, 180),), "cpu": ((4, 10, 180, 180),), "quick": ((1, 2, 32, 32),)},
    _heatmap,
    eager_and_compiled("mmdet3d", lambda x: baselines.centerpoint_heatmap_loss(x["logits"], x["heatmap"])),
)


def _multi_label(shape, device, generator, positive_fraction=1e-3):
    """Open Images-like multi-label targets: about 10 positive classes per image of 9605."""
    logits = torch.randn(shape, generator=generator, device=device) - 4
    targets = (torch.rand(shape, generator=generator, device=device) < positive_fraction).float()
    return {"logits": logits.requires_grad_(), "targets": targets}


ASYMMETRIC = Case(
    "asymmetric_loss",
    {"cuda": ((256, 9605),), "cpu": ((256, 9605),), "quick": ((16, 200),)},
    _multi_label,
    eager_and_compiled(
        "timm",
        lambda x: baselines.timm_asymmetric_loss(x["logits"], x["targets"], ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP),
    ),
)

CASES = {case.loss: case for case in (SOFTMAX, STAR, QUALITY, VARIFOCAL, GAUSSIAN, ASYMMETRIC)}


def make_step(loss: Callable[[Inputs], torch.Tensor], inputs: Inputs, mode: str):
    logits = inputs["logits"]
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return loss(inputs)

        return forward

    def forward_backward():
        logits.grad = None
        value = loss(inputs)
        value.backward()
        return value

    return forward_backward


def build(impl: Impl) -> Callable[[Inputs], torch.Tensor]:
    if not impl.compiled:
        return impl.loss
    torch._dynamo.reset()  # a fresh cache per shape, so that no case falls back to eager
    return torch.compile(impl.loss, dynamic=False)


def shape_key(device: torch.device, quick: bool) -> str:
    return "quick" if quick else device.type


def run(device: torch.device, threads: int, quick: bool, min_run_time: float, losses: list[str]) -> list[dict]:
    torch.set_num_threads(threads)
    env = report.environment(device, threads)
    env["copy_gbps"] = timing.copy_bandwidth_gbps(device, threads=threads, min_run_time=min(min_run_time, 0.5))
    rows = []
    for case in (CASES[name] for name in losses):
        for shape in case.shapes[shape_key(device, quick)]:
            inputs = case.make_inputs(shape, device, torch.Generator(device=device).manual_seed(0))
            for mode in case.modes:
                for impl in case.impls:
                    rows.append(measure(case, impl, inputs, mode, device, threads, min_run_time) | env)
            del inputs
    return rows


def measure(case: Case, impl: Impl, inputs: Inputs, mode: str, device, threads: int, min_run_time: float) -> dict:
    step = make_step(build(impl), inputs, mode)
    start = time.perf_counter()
    value = step().item()  # compiles, for torch.compile
    first_call_s = time.perf_counter() - start
    timed = timing.time_step(step, device, threads=threads, min_run_time=min_run_time, min_samples=5)
    shape = "x".join(map(str, inputs["logits"].shape))
    print(f"{case.loss} {mode} {shape} {impl.name}: {timed.median_ms:.3g} ms", file=sys.stderr)
    min_bytes = case.min_bytes(inputs, mode)
    inputs["logits"].grad = None  # its old gradient would be freed inside the measurement
    peak = timing.peak_extra_bytes(step, device)
    inputs["logits"].grad = None
    return {
        "loss": case.loss,
        "impl": impl.name,
        "fused": impl.name == case.fused,
        "mode": mode,
        "shape": shape,
        "elements": inputs["logits"].numel(),
        "dtype": str(inputs["logits"].dtype).removeprefix("torch."),
        "median_ms": timed.median_ms,
        "q25_ms": timed.q25_ms,
        "q75_ms": timed.q75_ms,
        "samples": timed.samples,
        "min_bytes": min_bytes,
        "gbps": min_bytes / (timed.median_ms / 1e3) / 1e9,
        "peak_extra_bytes": peak,
        "compile_s": first_call_s - timed.median_ms / 1e3 if impl.compiled else None,
        "value": value,
    }


def table(rows: list[dict]) -> str:
    """One line per measurement; 'vs fused' is this row's time over the fused row's of its case."""
    fused = {(r["loss"], r["mode"], r["shape"]): r["median_ms"] for r in rows if r["fused"]}
    lines = [
        "| loss | mode | shape | impl | median ms (q25-q75) | GB/s (% copy) | peak extra MiB | compile s | vs fused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = fused.get((r["loss"], r["mode"], r["shape"]))
        ratio = "" if r["fused"] else "no fused kernel yet" if base is None else f"{r['median_ms'] / base:.2f}x slower"
        peak = "–" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.1f}"
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['loss']} | {r['mode']} | {r['shape']} | {r['impl']} | "
            f"{r['median_ms']:.3g} ({r['q25_ms']:.3g}-{r['q75_ms']:.3g}) | "
            f"{r['gbps']:.1f} ({100 * r['gbps'] / r['copy_gbps']:.0f}%) | {peak} | {compile_s} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="small shapes, 0.1 s per measurement")
    parser.add_argument("--losses", default=",".join(CASES), help="comma-separated subset of %(default)s")
    parser.add_argument("--min-run-time", type=float, help="seconds per measurement (default 1, --quick 0.1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    losses = args.losses.split(",")
    if unknown := set(losses) - set(CASES):
        parser.error(f"--losses: unknown {sorted(unknown)}; choose from {list(CASES)}")
    device = torch.device(args.device)
    rows = run(device, args.threads, args.quick, args.min_run_time or (0.1 if args.quick else 1.0), losses)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "family-" + report.output_stem(rows[0], args.quick)
    report.write_jsonl(rows, args.out / f"{stem}.jsonl")
    env = rows[0]
    print(
        f"{env['device_name']}, torch {env['torch']}, {args.threads} threads, copy {env['copy_gbps']:.1f} GB/s; "
        f"wrote {args.out / stem}.jsonl\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
