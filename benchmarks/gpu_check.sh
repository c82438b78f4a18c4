#!/usr/bin/env bash
# The CUDA CRF's device check, run as a whole on a GPU machine within 8 minutes:
#   1. installs the carried wheels (.whl/, from benchmarks/fetch_device_wheels.sh) and pydensecrf2,
#   2. builds the extension against the machine's torch and checks its PTX for fused multiply-adds,
#   3. runs the CUDA tests (compute-sanitizer memcheck / racecheck / synccheck among them),
#   4. benchmarks/crf.py (CUDA columns), a batch of 8 and the per-kernel time of one call,
#   5. benchmarks/train_throughput.py,
#   6. a short `deeplab fit` + `validate` with and without the CRF on the synthetic config at bf16.
# Every step has a time limit and the script goes on past a failed one; it writes gpu_check.log
# and gpu_check.json (every figure, and each step's exit status and seconds) under $OUT
# (default outputs/gpu_check).
#
#   benchmarks/fetch_device_wheels.sh       # first, where a package registry is reachable:
#                                           # .whl/ (git-ignored) must travel with the tree
#   benchmarks/gpu_check.sh                 # on the GPU machine
#   benchmarks/gpu_check.sh --cpu-dry-run   # here: skips what needs a GPU, runs the rest tiny
# (GPU_CHECK_CPU_DRY_RUN=1 does the same as --cpu-dry-run.) GPU_CHECK_STEPS="build cuda_tests"
# runs only the named steps (a rerun of what failed); GPU_CHECK_BUDGET_S caps the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=${GPU_CHECK_CPU_DRY_RUN:-0}
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
OUT=${OUT:-$ROOT/outputs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
STEPS=$OUT/steps.jsonl
WORK=$(mktemp -d)
: >"$LOG"
: >"$STEPS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$PATH:$CUDA_HOME/bin

log() { echo "$*" | tee -a "$LOG"; }

# The whole run ends within GPU_CHECK_BUDGET_S seconds (a device call is cut at 10 minutes):
# each step's limit is cut to what is left, and a step with no time left is skipped.
# The dry run has no such cap and four times each step's limit: a shared CPU is slow.
if [[ $DRY == 1 ]]; then
    DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-3600}))
    LIMIT_FACTOR=4
else
    DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-480}))
    LIMIT_FACTOR=1
fi

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output into the log (and
# into $WORK/NAME.out), and records the exit status and the wall time.
step() {
    local name=$1 limit=$(($2 * LIMIT_FACTOR))
    shift 2
    if [[ -n ${GPU_CHECK_STEPS:-} && " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        skip "$name" "not in GPU_CHECK_STEPS"
        return 0
    fi
    local left=$((DEADLINE - SECONDS))
    if ((left < 10)); then
        skip "$name" "out of time"
        return 0
    fi
    ((limit > left)) && limit=$left
    log ""
    log "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.out" >>"$LOG"
    local rc=${PIPESTATUS[0]}
    log "=== $name: exit $rc after $((SECONDS - start))s"
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - start))" >>"$STEPS"
    return 0
}

skip() {
    log ""
    log "=== $1: skipped ($2)"
    printf '{"step": "%s", "rc": null, "skipped": "%s"}\n' "$1" "$2" >>"$STEPS"
}

log "gpu_check $(date -u +%FT%TZ) dry_run=$DRY commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ---- 1. packages ---------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    skip install "dry run: uses this machine's environment"
elif compgen -G ".whl/*.whl" >/dev/null; then
    SITE=/tmp/gpu_check_site
    step install 120 bash -c "
        set -e
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
        if compgen -G '.whl/pydensecrf2-*.tar.gz' >/dev/null; then
            PYTHONPATH=$SITE $PY -m pip install -q --no-index --no-deps --no-build-isolation --target $SITE .whl/pydensecrf2-*.tar.gz
        fi"
    export PYTHONPATH=$ROOT:$SITE${PYTHONPATH#$ROOT}
else
    skip install "no .whl/ folder (run benchmarks/fetch_device_wheels.sh where a registry is reachable)"
fi
step environment 30 bash -c "nvidia-smi || true; $PY - <<'EOF'
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'devices', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
for name in ('pytorch_lightning', 'jsonargparse', 'albumentations', 'wandb', 'pydensecrf2', 'pydensecrf'):
    try:
        module = __import__(name)
        print(name, getattr(module, '__version__', 'present'))
    except Exception as error:
        print(name, 'MISSING', error)
EOF"

# ---- 2. build -----------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    skip build "dry run: uses the extension already built here"
else
    step build 240 env MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1 \
        $PY setup.py build_ext --inplace
fi
# ---- 3. CUDA tests (the sanitizer runs are among them) -------------------------------------
# The real-GPU variants only: the same tests on the host emulation of the CUDA sources run in
# every `make test`, so the GPU run adds what only hardware shows (device arithmetic, streams,
# graphs, synchronisation, compute-sanitizer).
step cuda_tests 240 $PY -m pytest -q -p no:cacheprovider -rs -m "not emulated" --junitxml "$OUT/cuda_tests.xml" \
    tests/crf/test_crf_cuda.py tests/crf/test_crf_index_limit.py

# No fma.rn.f32 may appear in the PTX (the CPU rounds every multiply and add); fma.rn.f64 only
# in the float64 softmax (libm exp). Plain (contractible) mul/add/sub.f32 must not appear either.
if command -v nvcc >/dev/null; then
    step ptx_fma 60 bash -c "
        for f in csrc/cuda/*.cu; do
            ptx=$WORK/\$(basename \$f .cu).ptx
            nvcc -ptx -arch=compute_90 -O3 -std=c++20 --expt-relaxed-constexpr -diag-suppress=3189 \
                -Icsrc -I\$CUDA_HOME/include \$f -o \$ptx || exit 1
            echo \"PTX \$(basename \$f): fma.rn.f32 \$(grep -c 'fma.rn.f32' \$ptx) contractible_f32 \$(grep -cE '\\b(mul|add|sub)\\.f32' \$ptx) fma.rn.f64_outside_softmax \$(awk '/\\.entry/{e=\$0} /fma\\.rn\\.f64/ && e !~ /softmax_kernel/{n++} END{print n+0}' \$ptx)\"
        done"
else
    skip ptx_fma "nvcc is not on PATH"
fi

# ---- 4. CRF benchmark ----------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    step crf_benchmark 120 $PY benchmarks/crf.py --sizes 64x48x5 --repeats 1 --memory-sizes 64x48x5 --no-cuda
else
    step crf_benchmark 120 $PY benchmarks/crf.py --repeats 3
fi
# A batch of 8 (build and iterations timed apart, peak memory) and the time per kernel of one
# 500x375x21 call, from the profiler: where the next speed-up step starts.
cat >"$WORK/crf_batch.py" <<'EOF'
import json, statistics, sys, time
import torch
from lightning_deeplab.crf import dense_crf, unary_from_softmax
from lightning_deeplab.crf.mean_field import KernelSettings, build_kernels, mean_field, pixels_last

dry = sys.argv[1] == "1"
device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
width, height, classes, batch = (32, 24, 5, 2) if dry else (500, 375, 21, 8)
params = {"pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0}
g = torch.Generator().manual_seed(0)
image = (torch.rand(batch, 3, height, width, generator=g) * 255).to(torch.uint8).to(device)
unary = unary_from_softmax(torch.softmax(torch.randn(batch, classes, height, width, generator=g) * 3, 1)).to(device)


def timed(fn):
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(); result = fn(); end.record(); torch.cuda.synchronize()
        return result, start.elapsed_time(end) / 1e3
    start = time.perf_counter(); result = fn()
    return result, time.perf_counter() - start


def phases(unary, image, repeats):
    builds, loops = [], []
    for _ in range(repeats + 1):
        kernels, build = timed(lambda: build_kernels(image, KernelSettings(**params), torch.float32))
        _, loop = timed(lambda: mean_field(-pixels_last(unary), kernels, 10))
        builds.append(build); loops.append(loop)
    return statistics.median(builds[1:]), statistics.median(loops[1:])


figures = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
build, loop = phases(unary, image, 1 if dry else 5)
figures[f"batch{batch}_{width}x{height}x{classes}"] = {
    "build_s": build, "iterations_s": loop, "per_image_s": (build + loop) / batch,
    "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
}
if device.type == "cuda":
    one_unary, one_image = unary[:1].contiguous(), image[:1].contiguous()
    dense_crf(one_unary, one_image, **params)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        dense_crf(one_unary, one_image, **params)
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total > 0:
            kernels[event.key[:120]] = {"calls": event.count, "total_ms": total / 1e3}
    figures["kernels_one_call_500x375x21"] = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["total_ms"]))
print(json.dumps(figures, indent=2))
with open(sys.argv[2], "w") as f:
    json.dump(figures, f, indent=2)
EOF
step crf_batch 60 $PY "$WORK/crf_batch.py" "$DRY" "$WORK/crf_batch.json"

# ---- 5. training throughput ----------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    step train_throughput 180 $PY benchmarks/train_throughput.py --device cpu --backbone resnet18 --crop 65 \
        --batch 2 --steps 2 --warmup 1 --skip-inference --json "$WORK/train_throughput.json"
else
    step train_throughput 180 $PY benchmarks/train_throughput.py --steps 8 --warmup 2 --skip-inference \
        --json "$WORK/train_throughput.json"
fi

# ---- 6. fit + validate at bf16, with and without the CRF -----------------------------------
RUN=$WORK/synthetic
if [[ $DRY == 1 ]]; then
    ACCEL=(--trainer.accelerator cpu --trainer.max_steps 2 --trainer.val_check_interval 2
           --trainer.limit_val_batches 2 --data.crop_size 64 --data.batch_size 2 --data.val_batch_size 2)
else
    ACCEL=(--trainer.accelerator gpu --trainer.max_steps 20 --trainer.val_check_interval 20)
fi
COMMON=(--config configs/synthetic.yaml --trainer.precision bf16-mixed --trainer.default_root_dir "$RUN"
        --trainer.logger false --trainer.num_sanity_val_steps 0 --data.num_workers 2 "${ACCEL[@]}")
step fit 120 $PY -m lightning_deeplab fit "${COMMON[@]}" --model.eval_crf false
for crf in false true; do
    step "validate_crf_$crf" 60 $PY -m lightning_deeplab validate "${COMMON[@]}" \
        --model.eval_crf "$crf" --ckpt_path "$RUN/checkpoints/last.ckpt"
done

# ---- the figures, as one JSON --------------------------------------------------------------
$PY - "$WORK" "$STEPS" "$OUT/gpu_check.json" "$DRY" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, re, sys
import xml.etree.ElementTree as ET

work, steps_path, out_path, dry = sys.argv[1:5]
result = {"dry_run": dry == "1", "steps": [json.loads(line) for line in open(steps_path)]}


def read(name):
    path = os.path.join(work, name)
    return open(path, errors="replace").read() if os.path.exists(path) else ""


result["environment"] = read("environment.out").strip().splitlines()[-8:]
result["ptx_fma"] = {
    m.group(1): {k: int(v) for k, v in re.findall(r"(\S+) (\d+)", m.group(2))}
    for m in re.finditer(r"^PTX (\S+): (.*)$", read("ptx_fma.out"), re.M)
}
junit = os.path.join(os.path.dirname(out_path), "cuda_tests.xml")
if os.path.exists(junit):
    tests = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag + ": " + (child.get("message") or "")[:300]
        tests[case.get("name")] = {"outcome": outcome, "seconds": float(case.get("time", 0))}
    result["cuda_tests"] = tests
# benchmarks/crf.py prints a Markdown table: keep its header and rows as records.
rows = [line for line in read("crf_benchmark.out").splitlines() if line.startswith("|") and "---" not in line]
if rows:
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    result["crf_benchmark"] = [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in rows[1:]]
    result["crf_benchmark_machine"] = [l for l in read("crf_benchmark.out").splitlines() if l.startswith("machine:")]
for name in ("crf_batch", "train_throughput"):
    path = os.path.join(work, name + ".json")
    if os.path.exists(path):
        result[name] = json.load(open(path))
# Lightning's validate table: "│ metric │ value │" rows (rich), or "metric value" lines (plain).
for crf in ("false", "true"):
    text = read(f"validate_crf_{crf}.out")
    metrics = dict(re.findall(r"[│|]\s*([\w/.-]+)\s*[│|]\s*([-+0-9.eE]+|nan)\s*[│|]", text))
    metrics.update(re.findall(r"^\s*([A-Za-z][\w.-]*/[\w/.-]+)\s+([-+0-9.eE]+|nan)\s*$", text, re.M))
    result[f"validate_crf_{crf}"] = {k: float(v) for k, v in metrics.items()}
failed = [s["step"] for s in result["steps"] if s.get("rc") not in (0, None)]
result["failed_steps"] = failed
with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
print(f"wrote {out_path}; failed steps: {failed or 'none'}")
EOF
rm -rf "$WORK"
