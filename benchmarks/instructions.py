"""Instructions per element of the CPU row loop, counted by callgrind: repeatable on a shared machine.

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect="focal_loss_ext::cpu::run_rows*" \
        --callgrind-out-file=/tmp/cg.out python benchmarks/instructions.py --case   # (not AVX-512: valgrind lacks it)
    callgrind_annotate /tmp/cg.out | head -20            # "PROGRAM TOTALS" / elements = Ir per element

Runs one call of the benchmark's RetinaNet case (K = 80, 2% positives, alpha 0.25, gamma 2, "sum"
over num_pos) on one thread; only the CPU block runner (run_rows: the row loop plus a few thousand
instructions of bookkeeping per call) is counted, so the count excludes Python, the autograd
graph and the allocation. `--report` runs valgrind itself for every
(isa, dtype, mode) given and prints the table that benchmarks/notes/cpu-avx512.md quotes.

valgrind cannot run AVX-512 code; for that build, `--objdump` reads the compiled row loops
instead (build/temp*/csrc/cpu/rows_avx512.o by default) and prints, per float32 gamma-2 instance,
the instructions of its hot loop: the innermost loop that contains the divide, i.e. one vector of
16 elements (benchmarks/notes/cpu-throughput.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS_FUNCTIONS = "focal_loss_ext::cpu::run_rows*"


def run_case(anchors: int, dtype: str, mode: str, targets: str, gamma: float) -> None:
    import torch

    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from benchmarks import cases

    torch.set_num_threads(1)
    x = cases.make_inputs(anchors, getattr(torch, dtype), torch.device("cpu"), seed=0)
    t = x.labels if targets == "int" else x.onehot
    from focal_loss_ext import sigmoid_focal_loss

    if mode == "forward":
        with torch.no_grad():
            sigmoid_focal_loss(x.logits, t, cases.ALPHA, gamma, reduction="sum", normalizer=x.num_pos)
    else:
        sigmoid_focal_loss(x.logits, t, cases.ALPHA, gamma, reduction="sum", normalizer=x.num_pos).backward()


def count(isa: str, anchors: int, dtype: str, mode: str, targets: str, gamma: float) -> float:
    """Ir of the row loop per element, from one valgrind run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, FOCAL_LOSS_EXT_CPU_ISA=isa, OMP_NUM_THREADS="1")
        cmd = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={ROWS_FUNCTIONS}",
            f"--callgrind-out-file={out}", sys.executable, __file__, "--case", "--anchors", str(anchors),
            "--dtype", dtype, "--mode", mode, "--targets", targets, "--gamma", str(gamma),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        text = Path(out).read_text()
    total = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(total.group(1)) / (anchors * 80)


def objdump_loops(obj: str) -> None:
    """Instructions per vector of the float32, gamma-2 row loops of one compiled object."""
    symbols = subprocess.run(["nm", "-S", obj], capture_output=True, text=True, check=True).stdout
    print(f"hot loop of each float32 gamma-2 row loop in {obj} (one vector per iteration)\n")
    print("| targets | gradient | instructions | vector / mask | divides | calls |\n|---|---|---|---|---|---|")
    for line in symbols.splitlines():
        m = re.search(r"sigmoid_rows_implIfNS_12SigmoidFocalILNS_9GammaKindE2EEELb([01])ELb([01])E", line)
        if not m or ".cold" in line:
            continue
        start, size = int(line.split()[0], 16), int(line.split()[1], 16)
        text = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", f"--start-address={start}", f"--stop-address={start + size}", obj],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        code = [(int(a, 16), op, rest) for a, op, rest in re.findall(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", text, re.M)]
        backward = [
            (int(j.group(1), 16), addr)
            for addr, op, rest in code
            if op.startswith("j") and (j := re.match(r"([0-9a-f]+) ", rest)) and int(j.group(1), 16) <= addr
        ]
        divides = [addr for addr, op, _ in code if op.startswith("vdiv")]
        loops = [(lo, hi) for lo, hi in backward if any(lo <= d <= hi for d in divides)]
        if not loops:
            continue
        lo, hi = min(loops, key=lambda loop: loop[1] - loop[0])
        body = [(op, rest) for addr, op, rest in code if lo <= addr <= hi]
        vector = sum(1 for op, rest in body if re.search(r"%[xyz]mm|%k[0-7]", rest))
        targets = "labels" if m.group(1) == "1" else "float"
        calls = sum(1 for op, _ in body if op == "call")
        print(
            f"| {targets} | {'yes' if m.group(2) == '1' else 'no'} | {len(body)} | {vector} | "
            f"{sum(1 for op, _ in body if op.startswith('vdiv'))} | {calls} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="store_true", help="run the case once (under valgrind)")
    parser.add_argument("--isa", default="portable,avx2,avx512", help="with --report: paths to count")
    parser.add_argument("--anchors", type=int, default=10_000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mode", default="forward+backward", choices=("forward", "forward+backward"))
    parser.add_argument("--targets", default="int", choices=("int", "float"))
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--report", action="store_true", help="count every --isa x --dtypes x --modes x --gammas")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--modes", default="forward+backward")
    parser.add_argument("--gammas", default="2")
    parser.add_argument(
        "--objdump", nargs="?", const="", metavar="OBJ", help="count the AVX-512 build's hot loops (no valgrind)"
    )
    args = parser.parse_args()
    if args.objdump is not None:
        root = Path(__file__).resolve().parent.parent
        objects = sorted(root.glob("build/temp*/csrc/cpu/rows_avx512.o"))
        if not args.objdump and not objects:
            parser.error("no build/temp*/csrc/cpu/rows_avx512.o: build first (python setup.py build_ext --inplace)")
        return objdump_loops(args.objdump or str(objects[0]))
    if args.case:
        return run_case(args.anchors, args.dtype, args.mode, args.targets, args.gamma)
    if not args.report:
        parser.error("pass --case (under valgrind) or --report")
    print(f"instructions per element of the row loop, {args.anchors:,} x 80, {args.targets} targets, one thread\n")
    print("| path | dtype | mode | gamma | Ir / element |\n|---|---|---|---|---|")
    for isa in args.isa.split(","):
        for dtype in args.dtypes.split(","):
            for mode in args.modes.split(","):
                for gamma in args.gammas.split(","):
                    ir = count(isa, args.anchors, dtype, mode, args.targets, float(gamma))
                    print(f"| {isa} | {dtype} | {mode} | {gamma} | {ir:.1f} |", flush=True)


if __name__ == "__main__":
    main()
