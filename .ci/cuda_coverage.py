"""Lines of csrc/cuda that no emulated test ran, and functions (each template instantiation on
its own: every dtype x gamma form x target form of a kernel) that no test called.

Reads the gcov data of the coverage build of the emulated flavour (make coverage-emulated) and
merges it over translation units (the shared .cuh is compiled into each; its file-local
functions have the same demangled name in each). A line report alone would hide a combination
that never ran, because the template's lines run for the others. Exits 1 if any line of
csrc/cuda is left unexecuted or any of its functions is never called."""

import glob
import json
import os
import subprocess
import sys
from collections import defaultdict


def main(objects: str) -> int:
    lines = defaultdict(int)  # (file, line) -> executions, summed over translation units
    functions = defaultdict(int)  # (file, demangled name) -> executions
    for gcda in sorted(glob.glob(os.path.join(objects, "**", "*.gcda"), recursive=True)):
        out = subprocess.run(
            ["gcov", "--json-format", "--stdout", "--object-directory", os.path.dirname(gcda), gcda],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for doc in out.splitlines():
            for f in json.loads(doc)["files"]:
                path = os.path.normpath(f["file"])
                if f"{os.sep}csrc{os.sep}cuda{os.sep}" not in path:
                    continue
                path = path[path.index("csrc" + os.sep) :]
                for line in f["lines"]:
                    lines[path, line["line_number"]] += line["count"]
                for fn in f["functions"]:
                    functions[path, fn["demangled_name"]] += fn["execution_count"]
    if not lines:
        print(f"no coverage data for csrc/cuda under {objects}")
        return 1
    missed = sorted(key for key, count in lines.items() if count == 0)
    files = sorted({path for path, _ in lines})
    for path in files:
        n = sum(1 for p, _ in lines if p == path)
        m = sum(1 for p, _ in missed if p == path)
        print(f"{path}: {n - m}/{n} lines ran")
    for path, number in missed:
        with open(path) as f:
            print(f"  never ran: {path}:{number}: {f.read().splitlines()[number - 1].strip()}")
    idle = sorted(f"{path}: {name}" for (path, name), count in functions.items() if count == 0)
    for entry in idle:
        print(f"  never called: {entry[:300]}")
    print(f"csrc/cuda: {len(lines) - len(missed)}/{len(lines)} lines ran")
    print(f"csrc/cuda: {len(functions) - len(idle)}/{len(functions)} functions and template instantiations called")
    return 1 if missed or idle else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
