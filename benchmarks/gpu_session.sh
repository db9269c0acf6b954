#!/usr/bin/env bash
# One GPU session on an H100: build, test, sanitize, benchmark. Run from the repository root:
#
#   bash benchmarks/gpu_session.sh                  # all stages: build test sanitize bench
#   bash benchmarks/gpu_session.sh build test       # some stages, in the order given
#
# Each stage prints one line (its log's tail when it fails); the last lines are the benchmark
# table. Logs, results and plot are copied to $OUT (4 files: logs.tar.gz, .jsonl, .md, .png).
# Stages can be run separately, e.g. `build test sanitize` first and `bench` afterwards; the
# build installs the package, so later stages on the same machine reuse it.
set -uo pipefail

OUT=${OUT:-/tmp/focal_loss_ext_session}
LOGS=$OUT/logs
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$LOGS" "$RESULTS"
PYTHON=${PYTHON:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
failed=0
bench_ok=0

stage() {  # stage NAME COMMAND...: run COMMAND with its output in $LOGS/NAME.log
    local name=$1 start=$SECONDS
    shift
    if "$@" >"$LOGS/$name.log" 2>&1; then
        echo "$name: ok ($((SECONDS - start)) s)"
    else
        echo "$name: FAILED ($((SECONDS - start)) s), see logs/$name.log; last lines:"
        tail -n 30 "$LOGS/$name.log" | sed 's/^/    /'
        failed=1
        return 1
    fi
}

build() {
    # The H100 is sm_90; one architecture keeps the build short. --no-index: the machine may have
    # no network, and the dependencies are expected to be installed already.
    TORCH_CUDA_ARCH_LIST=9.0 FOCAL_LOSS_EXT_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
        "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v . || return 1
    # From the repository root the source tree shadows the installed package, and it has no
    # compiled extension: give it the one just built so both copies are the same.
    if ! "$PYTHON" -c "import focal_loss_ext._C" 2>/dev/null; then
        cp "$(cd / && "$PYTHON" -c 'import focal_loss_ext._C as c; print(c.__file__)')" focal_loss_ext/
    fi
    "$PYTHON" - <<'EOF'
import torch, focal_loss_ext
x = torch.randn(1000, 80, device="cuda", requires_grad=True)
labels = torch.full((1000,), 80, device="cuda")
loss = focal_loss_ext.sigmoid_focal_loss(x, labels, reduction="sum")
loss.backward()
print("cuda kernel ok:", torch.cuda.get_device_name(), "torch", torch.__version__, "loss", loss.item())
EOF
}

sanitize() {
    local sanitizer
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    [ -n "$sanitizer" ] || { echo "compute-sanitizer not found"; return 1; }
    # Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees
    # out-of-bounds accesses that would otherwise land inside a larger cached block.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
        --target-processes all "$PYTHON" -m pytest -q -p no:cacheprovider tests -m cuda || return 1
    "$sanitizer" --tool racecheck --error-exitcode 1 \
        --target-processes all "$PYTHON" -m pytest -q -p no:cacheprovider tests -m cuda
}

for name in "${stages[@]}"; do
    case $name in
        build) stage build build || break ;;  # nothing else can run without it
        test) stage test "$PYTHON" -m pytest -x -q tests ;;
        sanitize) stage sanitize sanitize ;;
        bench) stage bench "$PYTHON" benchmarks/run.py --full --device cuda --out "$RESULTS" && bench_ok=1 ;;
        *) echo "unknown stage $name (build, test, sanitize, bench)"; exit 2 ;;
    esac
done

tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
latest=$(ls -t "$RESULTS"/cuda-*.jsonl 2>/dev/null | head -n 1)
if [[ $bench_ok == 1 && -n "$latest" ]]; then
    cp "${latest%.jsonl}".{jsonl,md,png} "$OUT"/ 2>/dev/null
    echo
    # The summary table: the first Markdown table of the report.
    sed -n '/^| mode /,/^$/p' "${latest%.jsonl}.md" | sed -n '1,/^$/p'
fi
exit $failed
