"""One figure per run: time vs anchors per implementation (top), ours' speed-ups (middle), and a bar
chart of every implementation at the largest size (bottom, the headline case of a default run)."""

from __future__ import annotations

from pathlib import Path


def plot(rows: list[dict], impls: list[str], title: str, path: Path) -> bool:
    """Writes the PNG; False (and nothing written) where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    panels = list(dict.fromkeys((row["mode"], row["dtype"]) for row in rows))
    fig, axes = plt.subplots(3, len(panels), figsize=(5 * len(panels), 12), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(impls)}
    others = [name for name in impls if not name.startswith("ours")]

    for column, (mode, dtype) in enumerate(panels):
        panel_rows = [r for r in rows if r["mode"] == mode and r["dtype"] == dtype]
        time_ax, speedup_ax, bar_ax = axes[0][column], axes[1][column], axes[2][column]

        for name in impls:
            series = sorted((r for r in panel_rows if r["impl"] == name), key=lambda r: r["anchors"])
            if not series:
                continue
            anchors = [r["anchors"] for r in series]
            median = [r["median_ms"] for r in series]
            spread = [
                [r["median_ms"] - r["q25_ms"] for r in series],
                [r["q75_ms"] - r["median_ms"] for r in series],
            ]
            time_ax.errorbar(anchors, median, yerr=spread, marker="o", capsize=3, color=colors[name], label=name)

        for ours, style in (("ours-int", "-"), ("ours-float", "--")):
            series = sorted((r for r in panel_rows if r["impl"] == ours), key=lambda r: r["anchors"])
            for other in others:
                points = [(r["anchors"], r["speedup_vs"][other]) for r in series if other in r["speedup_vs"]]
                if points:
                    speedup_ax.plot(*zip(*points), style, marker="o", color=colors[other], label=f"{ours} vs {other}")

        largest = max(r["anchors"] for r in panel_rows)
        bars = [r for name in impls for r in panel_rows if r["impl"] == name and r["anchors"] == largest]
        bar_ax.bar(
            [r["impl"] for r in bars],
            [r["median_ms"] for r in bars],
            yerr=[[r["median_ms"] - r["q25_ms"] for r in bars], [r["q75_ms"] - r["median_ms"] for r in bars]],
            color=[colors[r["impl"]] for r in bars],
            capsize=3,
        )
        for i, r in enumerate(bars):
            bar_ax.annotate(f"{r['median_ms']:.3g} ms", (i, r["median_ms"]), ha="center", va="bottom", fontsize="small")
        bar_ax.set(ylabel="median time per call (ms)", title=f"{mode}, {dtype}, {largest:,} anchors x 80")
        bar_ax.tick_params(axis="x", labelrotation=30)

        time_ax.set(xscale="log", yscale="log", ylabel="median time per call (ms)", title=f"{mode}, {dtype}")
        speedup_ax.set(xscale="log", yscale="log", xlabel="anchors (× 80 classes)", ylabel="speed-up of ours (×)")
        speedup_ax.axhline(1.0, color="grey", linewidth=0.8)
        for ax in (time_ax, speedup_ax):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
