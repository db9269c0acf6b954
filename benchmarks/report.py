"""Where a run happened, and its rows as JSON lines and Markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD's hash, with '+dirty' when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device, threads: int) -> dict:
    import focal_loss_ext

    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "focal_loss_ext": getattr(focal_loss_ext, "__version__", None),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threading_env": threading_env(),
    } | (cpu_details() if device.type == "cpu" else {})


def cpu_details() -> dict:
    """The CPU's model and the kernel's vector path (instruction-set build) in use."""
    from focal_loss_ext import _C
    from focal_loss_ext.env import cpu_model

    # The emulated-CUDA build runs the CUDA kernels on the CPU and has no CPU instruction-set builds.
    isa = "emulated-cuda" if getattr(_C, "emulated_cuda", 0) else torch.ops.focal_loss_ext._cpu_isa()
    return {"cpu_model": cpu_model(), "cpu_isa": isa}


# Variables that change how CPU threads wait and spread; a shared machine is sensitive to them.
THREADING_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_PROC_BIND", "KMP_BLOCKTIME")


def threading_env() -> dict[str, str]:
    return {name: os.environ[name] for name in THREADING_VARIABLES if name in os.environ}


def short_commit(env: dict) -> str:
    commit = env["git_commit"]
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def output_stem(env: dict, quick: bool) -> str:
    """<device-slug>-<date>, e.g. cpu-amd-epyc-avx512-2t-2026-12-02 or cuda-nvidia-h100-80gb-hbm3-..."""
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    threads = f"-{env['cpu_isa']}-{env['threads']}t" if env["device"] == "cpu" else ""
    return f"{env['device']}-{slug}{threads}-{env['date'][:10]}" + ("-quick" if quick else "")


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}×"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _cases(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """Rows grouped by (mode, dtype, anchors), each group keyed by implementation, in run order."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cases.setdefault((row["mode"], row["dtype"], row["anchors"]), {})[row["impl"]] = row
    return cases


# Column labels for the summary table, which must stay narrow enough for a terminal.
SHORT_NAMES = {
    "ours-int": "ours int",
    "ours-float": "ours float",
    "torchvision-eager": "tv eager",
    "torchvision-compile": "tv compile",
    "reference-int": "reference",
}


def summary_table(rows: list[dict], impls: list[str]) -> str:
    """One line per case: every implementation's median, and how ours-int compares."""
    short = [SHORT_NAMES.get(name, name) for name in impls]
    others = [name for name in impls if not name.startswith("ours")]
    header = ["mode", "dtype", "anchors"] + [f"{name} ms" for name in short]
    header += [f"int vs {SHORT_NAMES.get(name, name)}" for name in others]
    header += ["int % copy BW", "int peak extra (× logits)", "compile s"]
    lines = []
    for (mode, dtype, anchors), by_impl in _cases(rows).items():
        ours = by_impl.get("ours-int", {})
        compiled = by_impl.get("torchvision-compile", {})
        line = [mode, dtype, f"{anchors:,}"]
        line += [_ms(by_impl.get(name, {}).get("median_ms")) for name in impls]
        line += [_times(ours.get("speedup_vs", {}).get(name)) for name in others]
        line += [
            "–" if ours.get("pct_of_copy") is None else f"{ours['pct_of_copy']:.0f}%",
            "–" if ours.get("peak_extra_logits") is None else f"{ours['peak_extra_logits']:.2f}",
            "–" if compiled.get("compile_s") is None else f"{compiled['compile_s']:.1f}",
        ]
        lines.append(line)
    return _table(header, lines)


def detail_table(rows: list[dict]) -> str:
    """One line per measurement, with the spread, bandwidth and memory."""
    header = [
        "mode",
        "dtype",
        "anchors",
        "impl",
        "median ms",
        "q25–q75 ms",
        "samples",
        "GB/s",
        "% of copy",
        "peak extra MiB",
        "× logits",
        "compile s",
    ]
    lines = [
        [
            row["mode"],
            row["dtype"],
            f"{row['anchors']:,}",
            row["impl"],
            _ms(row["median_ms"]),
            f"{_ms(row['q25_ms'])}–{_ms(row['q75_ms'])}",
            str(row["samples"]),
            f"{row['gbps']:.1f}",
            f"{row['pct_of_copy']:.0f}%",
            _mib(row["peak_extra_bytes"]),
            "–" if row["peak_extra_logits"] is None else f"{row['peak_extra_logits']:.2f}",
            "–" if row["compile_s"] is None else f"{row['compile_s']:.1f}",
        ]
        for row in rows
    ]
    return _table(header, lines)


def markdown_report(rows: list[dict], impls: list[str], env: dict, command: str, notes: str) -> str:
    return (
        "\n\n".join(
            [
                f"# sigmoid focal loss benchmark: {env['device_name']}",
                f"Command: `{command}`",
                "torch {torch}, CUDA {cuda}, Python {python}, commit `{git_commit}`, {date}, "
                "{threads} CPU thread(s).".format(**env)
                + (f" CPU: {env['cpu_model']}; vector path: `{env['cpu_isa']}`." if "cpu_isa" in env else ""),
                notes,
                "## Summary",
                summary_table(rows, impls),
                "## Every measurement",
                detail_table(rows),
            ]
        )
        + "\n"
    )
