#!/usr/bin/env bash
# GPU check of the profiler, sized for 8 minutes on one H100/H200:
#   b1/b2/b3 at 512x512, batch 1: eager fp32/fp16/bf16, CUDA graphs, torch.compile, ONNX Runtime CUDA EP
#   and TensorRT EP, torch-tensorrt (each when installed); NVML energy over >= 5 s windows with idle and net;
#   the latency predictor of the default space built and scored on the GPU.
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT (when set) or runs/gpu-check
#   GPU_CHECK_SECONDS=300 bash benchmarks/gpu_check.sh
#
# Every section runs in its own process under `timeout` and inside one overall budget: a hung engine
# build or a missing package costs its section only, never the script (cheap sections come first).
# Each section appends JSON lines to results.jsonl; summary.md (printed at the end) holds the figures.
set -u -o pipefail

BUDGET=${GPU_CHECK_SECONDS:-460}
DEADLINE=$((SECONDS + BUDGET))
RESULTS=${OUT:-runs/gpu-check}
mkdir -p "$RESULTS"
JSONL="$RESULTS/results.jsonl"
SUMMARY="$RESULTS/summary.md"
: > "$JSONL"
HELPER=$(mktemp --suffix=.py)
trap 'rm -f "$HELPER"' EXIT
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cat > "$HELPER" <<'PY'
"""One section of the GPU check: prints and appends JSON lines; a failure is a line too, never a crash."""
import json, sys, time, traceback

import torch

out, section, presets, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")


def emit(**row):
    row["section"] = section
    print(json.dumps(row), flush=True)
    with open(out, "a") as handle:
        handle.write(json.dumps(row) + "\n")


if section == "env":
    from profiling import device_fingerprint
    emit(fingerprint=device_fingerprint("cuda"), cuda_available=torch.cuda.is_available())
    sys.exit(0)

from hrvit_space.config import preset
from hrvit_space.model import build_model
from profiling import measure_runs, prepare

if section == "predictor":
    from hrvit_space.space import SearchSpace
    from profiling import LatencyPredictor
    start = time.perf_counter()
    predictor = LatencyPredictor.build(SearchSpace.default(), "cuda", dtype=variants[0].split(":")[1],
                                       runtime=variants[0].split(":")[0], calibration=8, holdout=12, trials=10, max_seconds=15)
    acc = predictor.accuracy
    emit(runtime=predictor.runtime, dtype=predictor.dtype, build_s=time.perf_counter() - start, **{
        k: v for k, v in acc.to_dict().items() if k != "rows"}, describe=acc.describe(),
        span_ms=[min(r[2] for r in acc.rows), max(r[2] for r in acc.rows)])
    sys.exit(0)

for name in presets:
    config = preset(name)
    model, x = build_model(config).eval(), torch.randn(1, 3, *config.input_size)
    for variant in variants:
        runtime, dtype = variant.split(":")
        row = {"preset": name, "runtime": runtime, "dtype": dtype}
        try:
            start = time.perf_counter()
            prepared = prepare(runtime, model, x, torch.device("cuda"), dtype=dtype)
            row.update(prepare_s=time.perf_counter() - start, version=prepared.version, max_abs_diff=prepared.max_abs_diff)
            stats = measure_runs({"m": prepared.run}, torch.device("cuda"), warmup_s=2.0, trials=30, max_trials=60,
                                 trial_s=0.1, max_seconds=20)["m"]
            row.update(p50_ms=stats.median, p90_ms=stats.p90, p99_ms=stats.p99, cv=stats.cv, n=stats.n, stable=stats.stable)
            if section == "energy":
                from profiling.energy import EnergyMonitor, measure_energy, open_backend
                monitor = EnergyMonitor(open_backend(torch.device("cuda")))
                try:
                    energy = measure_energy(prepared.run, 1, torch.device("cuda"), monitor, window_s=6.0, idle_s=5.0)
                finally:
                    monitor.close()
                row.update(energy.to_dict())
            from profiling.fingerprint import device_fingerprint
            fp = device_fingerprint("cuda")
            row.update(sm_clock_mhz=fp.get("sm_clock_mhz"), temperature_c=fp.get("temperature_c"), power_limit_w=fp.get("power_limit_w"))
        except Exception as error:  # noqa: BLE001 -- a missing package or failed build is this row's result
            row.update(error=f"{type(error).__name__}: {str(error)[:300]}")
            traceback.print_exc(limit=2)
        emit(**row)
        torch.cuda.empty_cache()
PY

section() {  # section NAME LIMIT_S PRESETS VARIANTS
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  if (( left < 20 )); then
    echo "{\"section\": \"$name\", \"skipped\": \"overall budget of ${BUDGET} s spent\"}" | tee -a "$JSONL"
    return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (up to ${limit} s, ${left} s left)" >&2
  timeout --kill-after=10 "$limit" python3 "$HELPER" "$JSONL" "$name" "$3" "$4" 2> "$RESULTS/$name.err"
  local rc=$?
  if (( rc != 0 )); then
    echo "{\"section\": \"$name\", \"exit_code\": $rc, \"note\": \"$([ $rc -ge 124 ] && echo "timed out after ${limit} s" || echo "failed"), see $name.err\"}" | tee -a "$JSONL"
  fi
}

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible to torch: nothing to check" | tee "$SUMMARY"
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,temperature.gpu --format=csv > "$RESULTS/nvidia-smi.csv" 2>&1 || true

ALL=b1,b2,b3
section env          60  "$ALL" "-"
section eager        150 "$ALL" "eager:fp32,eager:fp16,eager:bf16,cuda-graphs:fp16"
section energy       60  "b1"   "eager:fp16"
section predictor    150 "-"    "eager:fp16"
section onnxruntime  150 "$ALL" "onnxruntime:fp16,onnxruntime-trt:fp16"
section compile      180 "$ALL" "compile:fp16"
section tensorrt     180 "$ALL" "tensorrt:fp16"

python3 - "$JSONL" "$SUMMARY" <<'PY'
"""The figures as one Markdown table (latency rows), plus energy and predictor lines."""
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
lines = ["| preset | runtime | dtype | p50 ms | p90 ms | p99 ms | n | max abs diff | note |", "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "preset" in r and r.get("section") != "energy":
        f = lambda k: (f"{r[k]:.2g}" if k == "max_abs_diff" else f"{r[k]:.3f}") if isinstance(r.get(k), float) else "-"
        lines.append(f"| {r['preset']} | {r['runtime']} | {r['dtype']} | {f('p50_ms')} | {f('p90_ms')} | {f('p99_ms')} | "
                     f"{r.get('n', '-')} | {f('max_abs_diff')} | {r.get('error', r.get('version', ''))} |")
for r in rows:
    if r.get("section") == "env" and "fingerprint" in r:
        fp = r["fingerprint"]
        lines.insert(0, f"GPU {fp.get('name')}, driver {fp.get('driver')}, CUDA {fp.get('cuda')}, torch {fp.get('torch')}, "
                        f"power limit {fp.get('power_limit_w')} W, SM clock {fp.get('sm_clock_mhz')}/{fp.get('max_sm_clock_mhz')} MHz\n")
    elif r.get("section") == "energy" and "preset" in r:
        lines.append(f"\nenergy {r['preset']} {r['runtime']} {r['dtype']}: {r.get('energy_mj_per_image')} mJ/image gross, "
                     f"{r.get('energy_net_mj_per_image')} net above {r.get('energy_idle_w')} W idle over {r.get('energy_window_s')} s "
                     f"[{r.get('energy_backend')}] {r.get('energy_unavailable_reason') or r.get('error') or ''}")
    elif r.get("section") == "predictor" and "describe" in r:
        lines.append(f"\npredictor ({r['runtime']} {r['dtype']}, built in {r['build_s']:.0f} s): {r['describe']}; "
                     f"held-out span {r['span_ms'][0]:.2f}-{r['span_ms'][1]:.2f} ms")
    elif "skipped" in r or "exit_code" in r:
        lines.append(f"\nsection {r['section']}: {r.get('skipped') or r.get('note')}")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
