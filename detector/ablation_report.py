"""Tables and plots of the ablation grid beside the paper's numbers, and of the imbalance study.

    python -m detector.ablation_report                # runs/ablation -> docs/ablation.md, docs/ablation/
    python -m detector.ablation_report --imbalance    # runs/imbalance -> docs/ablation.md, docs/ablation/

Reads <runs>/results.jsonl (one line per finished run, from `detector.ablation`),
writes the tables between the markers in docs/ablation.md, copies the results
next to the PNGs (AP against alpha and gamma; the prior-initialization loss curves)
so the report can be rebuilt from what is committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from detector.ablation import CURVE_POINTS, DEFAULT_STEPS, GRID, IMBALANCE_ROWS, SETTINGS

# Lin et al. 2017, Table 1 (COCO minival; a, b: ResNet-50-FPN; d: ResNet-101-FPN): AP, AP50, AP75.
PAPER = {
    "a-alpha0.1": (0.0, 0.0, 0.0),
    "a-alpha0.25": (10.8, 16.0, 11.7),
    "a-alpha0.5": (30.2, 46.7, 32.8),
    "a-alpha0.75": (31.1, 49.4, 33.0),
    "a-alpha0.9": (30.8, 49.7, 32.3),
    "a-alpha0.99": (28.7, 47.4, 29.9),
    "a-alpha0.999": (25.1, 41.7, 26.1),
    "b-gamma0.1": (31.4, 49.9, 33.1),
    "b-gamma0.2": (31.9, 50.7, 33.4),
    "b-gamma0.5": (32.9, 51.7, 35.2),
    "b-gamma1": (33.7, 52.0, 36.2),
    "b-gamma2": (34.0, 52.5, 36.5),
    "b-gamma5": (32.2, 49.6, 34.8),
    "d-ohem128": (31.1, 47.2, 33.2),
    "d-ohem512": (30.6, 47.0, 32.6),
    "d-ohem128-1:3": (31.1, 47.2, 33.2),  # the paper ran its 1:3 rows at NMS 0.5 only
    "d-ohem512-1:3": (24.0, 35.5, 25.8),
    "d-fl": (36.0, 54.9, 38.7),
}
START, END = "<!-- ablation-tables:start -->", "<!-- ablation-tables:end -->"
IMBALANCE_START, IMBALANCE_END = "<!-- imbalance-tables:start -->", "<!-- imbalance-tables:end -->"


def load(results: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            runs.setdefault(row["row"], []).append(row)
    return runs


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(runs: dict, rows: list[tuple[str, str, str]]) -> str:
    """rows: (label, our row name, paper key)."""
    lines = [
        "| setting | seeds | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, name, paper_key in rows:
        done = runs.get(name, [])
        ours = [mean_std([r[m] for r in done]) for m in ("AP", "AP50", "AP75")]
        diverged = sum(r["diverged"] for r in done)
        seeds = f"{len(done)}" + (f" ({diverged} diverged)" if diverged else "")
        paper = PAPER.get(paper_key)
        paper_cells = [f"{v:.1f}" for v in paper] if paper else ["–"] * 3
        lines.append(f"| {label} | {seeds} | " + " | ".join(ours + paper_cells) + " |")
    return "\n".join(lines)


def tables(runs: dict) -> str:
    alphas = [r for r in GRID if r.table == "a"]
    gammas = [r for r in GRID if r.table == "b"]
    a = table(runs, [(f"α = {r.model['focal_alpha']:g}", r.name, r.name) for r in alphas])
    b = table(
        runs,
        [("γ = 0, α = 0.75", "a-alpha0.75", "a-alpha0.75")]
        + [(f"γ = {r.model['focal_gamma']:g}, α = {r.model['focal_alpha']:g}", r.name, r.name) for r in gammas],
    )
    d = table(
        runs,
        [
            (f"OHEM{' 1:3' if '1:3' in r.name else ''}, {r.model['ohem_keep']} / image", r.name, r.name)
            for r in GRID
            if r.table == "d"
        ]
        + [("FL γ = 2, α = 0.25", "b-gamma2", "d-fl")],
    )
    prior = table(
        runs,
        [
            ("CE (α = 0.5), prior π = 0.01", "a-alpha0.5", ""),
            ("CE (α = 0.5), no prior (bias 0)", "p-ce-noprior", ""),
            ("FL (γ = 2, α = 0.25), prior π = 0.01", "b-gamma2", ""),
            ("FL (γ = 2, α = 0.25), no prior (bias 0)", "p-fl-noprior", ""),
        ],
    )
    done = sum(len(v) for v in runs.values())
    return (
        f"{done} runs finished.\n\n**(a) α-balanced cross entropy (γ = 0)**\n\n{a}\n\n"
        f"**(b) focal loss, the paper's α for each γ**\n\n{b}\n\n"
        f"**(d) OHEM (plain cross entropy over the selected anchors) against FL**; paper: ResNet-101, "
        f"NMS 0.7 for the rows without ratio; its 1:3 rows were run at NMS 0.5 only\n\n{d}\n\n"
        f"**Prior initialization**\n\n{prior}\n"
    )


def other_budgets(everything: dict, steps: int) -> str:
    """Rows also run at other step budgets, mean ± std over their seeds, beside this budget's."""
    budgets = sorted({r["steps"] for rs in everything.values() for r in rs} - {steps})
    lines = []
    for other in budgets:
        for row in GRID:
            longer = [r for r in everything.get(row.name, []) if r["steps"] == other]
            if longer:
                here = [r["AP"] for r in everything[row.name] if r["steps"] == steps]
                cells = [mean_std([r[m] for r in longer]) for m in ("AP", "AP50", "AP75")]
                lines.append(
                    f"| {row.name} | {other} x {longer[0]['images'] // other} | {len(longer)} | "
                    + " | ".join(cells)
                    + f" | {mean_std(here)} |"
                )
    if not lines:
        return ""
    header = [
        "| row | steps x images | seeds | AP | AP50 | AP75 | AP at the grid's budget |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n**Longer budgets** (rows also run for more steps)\n\n" + "\n".join(header + lines) + "\n"


def plot_ap(runs: dict, png: Path) -> None:
    from detector.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, rows, key, xlabel in (
        (axes[0], [r for r in GRID if r.table == "a"], "focal_alpha", "α (γ = 0)"),
        (axes[1], [GRID[3]] + [r for r in GRID if r.table == "b"], "focal_gamma", "γ (paper's α for each)"),
    ):
        xs, means, stds, paper = [], [], [], []
        for row in rows:
            aps = [r["AP"] for r in runs.get(row.name, [])]
            if aps:
                xs.append(row.model[key])
                means.append(100 * statistics.mean(aps))
                stds.append(100 * statistics.stdev(aps) if len(aps) > 1 else 0.0)
                paper.append(PAPER[row.name][0])
        positions = list(range(len(xs)))
        ax.errorbar(positions, means, yerr=stds, marker="o", capsize=3, label="ours (mean ± std over seeds)")
        ax.set_ylabel("AP here")
        twin = ax.twinx()
        twin.plot(positions, paper, "s--", color="gray", label="paper (COCO)")
        twin.set_ylabel("AP in the paper", color="gray")
        ax.set_xticks(positions, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="lower center")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_prior_init(run_root: Path, png: Path) -> None:
    """Classification loss against step for CE and FL, with and without the prior init."""
    from detector.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    pairs = (("CE (α = 0.5)", "a-alpha0.5", "p-ce-noprior"), ("FL (γ = 2, α = 0.25)", "b-gamma2", "p-fl-noprior"))
    for ax, (title, with_prior, without) in zip(axes, pairs):
        for name, colour, label in ((with_prior, "tab:blue", "prior π = 0.01"), (without, "tab:red", "bias 0")):
            for seed, log in enumerate(sorted(run_root.glob(f"{name}/seed*/metrics.jsonl"))):
                rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
                steps = [r["step"] for r in rows]
                ax.plot(
                    steps, [r["loss_cls"] for r in rows], color=colour, alpha=0.7, label=label if seed == 0 else None
                )
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("classification loss per positive anchor")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _spread(values: list[float], digits: int = 1) -> str:
    """mean ± sample std in AP points (x 100), or the one value, or a dash."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:+.{digits}f}"
    return f"{100 * statistics.mean(values):+.{digits}f} ± {100 * statistics.stdev(values):.{digits}f}"


def imbalance_runs(results: Path, longer: bool = False) -> dict[tuple[str, str], dict[int, dict]]:
    """(setting, row) -> seed -> result line, at the settings' budgets (longer: at larger ones)."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        if line.strip():
            r = json.loads(line)
            budget = SETTINGS[r["setting"]].steps if r["setting"] in SETTINGS else None
            if budget is not None and (r["steps"] > budget if longer else r["steps"] == budget):
                runs.setdefault((r["setting"], r["row"]), {})[r["seed"]] = r
    return runs


def longer_budgets(runs: dict) -> str:
    """The runs at budgets beyond their setting's: one row per (setting, loss)."""
    if not runs:
        return ""
    lines = [
        "\n**Longer budgets** (runs beyond their setting's budget)\n",
        "| setting | loss | steps x images | seeds | AP | AP gain over CE (same seeds) | AP change over the last 25 % "
        "| AP at 25 / 50 / 75 / 100 % of the budget | push at the end: positive / easy / hard |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (name, row), by_seed in sorted(runs.items(), key=lambda item: (list(SETTINGS).index(item[0][0]), item[0][1])):
        done = list(by_seed.values())
        curve = " / ".join(f"{100 * ap:.1f}" for _, ap in sorted(curve_at(done[0]).items())) if len(done) == 1 else "–"
        gain = "–" if row == "ce" else _spread(gains(runs, name, row))
        change = [c for c in map(last_quarter_change, done) if c is not None]
        lines.append(
            f"| {name} | {row} | {done[0]['steps']} x {done[0]['images'] // done[0]['steps']} | {len(done)} "
            f"| {mean_std([r['AP'] for r in done])} | {gain} | {_spread(change)} | {curve} | {push_at_end(done)} |"
        )
    return "\n".join(lines) + "\n"


def gains(runs: dict, setting: str, row: str) -> list[float]:
    """AP of `row` minus AP of cross entropy, seed by seed (the seeds both finished)."""
    ours, ce = runs.get((setting, row), {}), runs.get((setting, "ce"), {})
    return [ours[seed]["AP"] - ce[seed]["AP"] for seed in sorted(ours) if seed in ce]


def curve_at(run: dict) -> dict[float, float]:
    """AP at each of the scoring points (fractions of the budget) the run has."""
    steps = {round(fraction * run["steps"]): fraction for fraction in CURVE_POINTS}
    return {steps[p["step"]]: p["AP"] for p in run.get("curve", []) if p["step"] in steps}


def last_quarter_change(run: dict) -> float | None:
    """AP at the end minus AP at 75 % of the budget."""
    curve = curve_at(run)
    return curve[1.0] - curve[0.75] if 1.0 in curve and 0.75 in curve else None


def push_at_end(done: list[dict]) -> str:
    """Seed means of the final shares of |d loss_cls / d logit| (see `detector.ablation.gradient_shares`)."""
    ends = [r["curve"][-1] for r in done if r.get("curve") and "share_easy" in r["curve"][-1]]
    if not ends:
        return "–"
    return " / ".join(
        f"{100 * statistics.mean(e[f'share_{k}'] for e in ends):.0f} %" for k in ("positive", "easy", "hard")
    )


def imbalance_tables(runs: dict, foreground: dict, seeds: int) -> str:
    names = [n for n in SETTINGS if n in foreground or any(k[0] == n for k in runs)]
    planned = len(IMBALANCE_ROWS) * seeds
    lines = [
        "| setting | digits / image | foreground fraction | positive anchors / image | steps x images "
        "| test images | CPU ms / step (FL, CE; OHEM) | runs finished |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        info = foreground.get(name, {})
        done = [r for (s, _), by_seed in runs.items() if s == name for r in by_seed.values()]
        cost = {
            kind: [
                r["cpu_seconds_per_step"]
                for r in done
                if r.get("cpu_seconds_per_step") and (kind == "ohem") == ("ohem_keep" in r["overrides"])
            ]
            for kind in ("loss", "ohem")
        }
        cells = [f"{1000 * statistics.median(v):.0f}" if v else "–" for v in cost.values()]
        digits = info.get("digits_per_image", [SETTINGS[name].data["min_digits"], SETTINGS[name].data["max_digits"]])
        span = f"{digits[0]}" if digits[0] == digits[1] else f"{digits[0]}-{digits[1]}"
        lines.append(
            f"| {name} | {span} | {info.get('foreground_fraction', float('nan')):.4f} "
            f"| {info.get('positives_per_image', float('nan')):.1f} of {info.get('anchors_per_image', '–')} "
            f"| {SETTINGS[name].steps} x 4 | {SETTINGS[name].data['num_test_images']} "
            f"| {cells[0]}; {cells[1]} | {len(done)} / {planned} |"
        )
    text = "\n".join(lines) + "\n"
    header = (
        "| loss | seeds | AP | AP50 | AP75 | AP gain over CE (same seeds) | AP change over the last 25 % "
        "| AP at 25 / 50 / 75 / 100 % of the budget (seed mean) | push at the end: positive / easy / hard |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for name in names:
        fraction = foreground.get(name, {}).get("foreground_fraction", float("nan"))
        text += f"\n**{name}** (foreground fraction {fraction:.4f})\n\n{header}\n"
        for row in IMBALANCE_ROWS:
            done = list(runs.get((name, row.name), {}).values())
            metrics = [mean_std([r[m] for r in done]) for m in ("AP", "AP50", "AP75")]
            change = [c for c in map(last_quarter_change, done) if c is not None]
            points = [[curve_at(r).get(k) for k in CURVE_POINTS] for r in done]
            curve = " / ".join(
                f"{100 * statistics.mean(x for x in v if x is not None):.1f}" if any(x is not None for x in v) else "–"
                for v in zip(*points)
            )
            gain = "–" if row.name == "ce" else _spread(gains(runs, name, row.name))
            cells = metrics + [gain, _spread(change), curve if done else "–", push_at_end(done)]
            text += f"| {row.name} | {len(done)} | " + " | ".join(cells) + " |\n"
    return text


def converged(runs: dict, setting: str, tolerance: float = 0.01) -> bool:
    """Whether the setting's best loss (highest mean AP) changed by less than 1 AP over its last 25 %."""
    done = {row: list(by_seed.values()) for (name, row), by_seed in runs.items() if name == setting and by_seed}
    if not done:
        return False
    best = max(done.values(), key=lambda rs: statistics.mean(r["AP"] for r in rs))
    changes = [c for c in map(last_quarter_change, best) if c is not None]
    return bool(changes) and abs(statistics.mean(changes)) < tolerance


def plot_imbalance(runs: dict, foreground: dict, png: Path, longer: dict | None = None) -> None:
    """AP gain over cross entropy against the foreground fraction: seed mean ± std, and each seed.

    `longer`: runs beyond their setting's budget, drawn as stars beside the setting's point.
    """
    from detector.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, row in enumerate(r for r in IMBALANCE_ROWS if r.name != "ce"):
        colour = f"C{index}"
        xs, means, stds = [], [], []
        for name in SETTINGS:
            values = gains(runs, name, row.name)
            if not values or name not in foreground:
                continue
            x = foreground[name]["foreground_fraction"] * (1 + 0.04 * (index - 2))  # side by side
            xs.append(x)
            means.append(100 * statistics.mean(values))
            stds.append(100 * statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.scatter([x] * len(values), [100 * v for v in values], s=10, color=colour, alpha=0.35)
            if not converged(runs, name):
                ax.scatter([x], [means[-1]], s=90, facecolors="white", edgecolors=colour, zorder=3)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colour, label=row.name)
        for name in SETTINGS:
            values = gains(longer or {}, name, row.name)
            if values and name in foreground:
                steps = next(iter(longer[(name, row.name)].values()))["steps"]
                x = foreground[name]["foreground_fraction"] * (1 + 0.04 * (index - 2))
                label = f"{row.name}, {steps} steps"
                ax.scatter([x] * len(values), [100 * v for v in values], marker="*", s=120, color=colour, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("foreground fraction (positive anchors / all anchors)")
    ax.set_ylabel("AP gain over cross entropy (AP points)")
    ax.set_title("mean ± std over seeds (dots: single seeds; open: not converged; stars: longer runs)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_imbalance_curves(runs: dict, png: Path) -> None:
    """AP against the fraction of the budget, one panel per setting, one line per run."""
    from detector.plots import plt

    names = [n for n in SETTINGS if any(k[0] == n for k in runs)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 3.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for index, row in enumerate(IMBALANCE_ROWS):
            for seed, run in sorted(runs.get((name, row.name), {}).items()):
                curve = sorted(curve_at(run).items())
                ax.plot(
                    [fraction for fraction, _ in curve],
                    [100 * ap for _, ap in curve],
                    marker=".",
                    color=f"C{index}" if row.name != "ce" else "black",
                    alpha=1.0 if seed == min(runs[(name, row.name)]) else 0.4,
                    label=row.name if seed == min(runs[(name, row.name)]) else None,
                )
        for decay in (2 / 3, 8 / 9):
            ax.axvline(decay, color="gray", linewidth=0.6, linestyle=":")
        ax.set_title(f"{name}: {SETTINGS[name].steps} steps")
        ax.set_xlabel("fraction of the budget")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AP")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def replace_between(report: Path, start: str, end: str, text: str) -> None:
    old = report.read_text() if report.exists() else f"{start}\n{end}\n"
    head, rest = old.split(start, 1)
    report.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])


def imbalance_report(runs_dir: Path, report: Path, figures: Path, seeds: int = 3) -> str:
    """Copies the results (when the runs are here), then tables and figures from the copies."""
    for source, target in (("results.jsonl", "imbalance.jsonl"), ("foreground.json", "imbalance_foreground.json")):
        if (runs_dir / source).exists():
            shutil.copyfile(runs_dir / source, figures / target)
    runs = imbalance_runs(figures / "imbalance.jsonl")
    path = figures / "imbalance_foreground.json"
    foreground = json.loads(path.read_text()) if path.exists() else {}
    longer = imbalance_runs(figures / "imbalance.jsonl", True)
    plot_imbalance(runs, foreground, figures / "imbalance_gain.png", longer)
    plot_imbalance_curves(runs, figures / "imbalance_curves.png")
    text = imbalance_tables(runs, foreground, seeds) + longer_budgets(longer)
    replace_between(report, IMBALANCE_START, IMBALANCE_END, text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/ablation")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="the budget to tabulate and plot")
    parser.add_argument("--report", default="docs/ablation.md")
    parser.add_argument("--figures", default="docs/ablation")
    parser.add_argument("--imbalance", action="store_true", help="the imbalance study (default runs: runs/imbalance)")
    args = parser.parse_args(argv)
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    if args.imbalance:
        runs_dir = Path(args.runs if args.runs != "runs/ablation" else "runs/imbalance")
        print(imbalance_report(runs_dir, Path(args.report), figures))
        return
    runs_dir = Path(args.runs)
    shutil.copyfile(runs_dir / "results.jsonl", figures / "results.jsonl")
    everything = load(figures / "results.jsonl")
    runs = {name: [r for r in rs if r["steps"] == args.steps] for name, rs in everything.items()}
    plot_ap(runs, figures / "ap.png")
    plot_prior_init(runs_dir / f"steps{args.steps}", figures / "prior_init.png")
    text = tables(runs) + other_budgets(everything, args.steps)
    replace_between(Path(args.report), START, END, text)
    print(text)


if __name__ == "__main__":
    main()
