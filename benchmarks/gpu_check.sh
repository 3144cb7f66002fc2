#!/usr/bin/env bash
# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
#
# The GPU check, for a machine with one CUDA GPU: at most 8 minutes, start to finish.
#
#     bash benchmarks/gpu_check.sh OUTPUT_DIR
#
# Runs every attention backend against eager (float32 and bfloat16, forward and backward) and records which SDPA
# kernel the fused path reaches; bench_model.py at ViT-B/16 in bfloat16; the demo pretraining in bf16 and a
# --torch_compile training run. Writes OUTPUT_DIR/gpu_check.json, OUTPUT_DIR/gpu_check.md (the report, ready for
# docs/performance.md) and OUTPUT_DIR/logs/<step>.log. Each step has a time limit; a step that fails is recorded
# with the end of its log, and the next one runs. Exit status: 0 when every step passed, 1 otherwise or without a
# CUDA GPU (one line, at once), 2 for a wrong argument. The steps, their options and limits are in
# diffclip_lab/benchmarking/gpu_plan.py (`plan_steps`), which benchmarks/gpu_check.py's plan command prints; this
# script only runs them. PYTHON picks the interpreter (default python3).

set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh OUTPUT_DIR"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "$usage"
    exit 0
fi
if [[ $# -ne 1 || -z $1 || $1 == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
output=$1
[[ $output == /* ]] || output="$PWD/$output"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(command -v python3 || command -v python) || { echo "error: no python3 on PATH" >&2; exit 1; }
fi
if ! command -v timeout >/dev/null; then
    echo "error: timeout (GNU coreutils) is not installed" >&2
    exit 1
fi
# The checkout's packages whether installed or not; nothing from the network (a GPU machine may have none).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
kill_after=5 # seconds between a step's TERM and KILL; gpu_plan.py counts it in the 8 minutes

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
plan_options=()
[[ -n ${GPU_CHECK_ALLOW_CPU:-} ]] && plan_options=(--allow_cpu) # tests only: CPU sizes, not a GPU check
plan=$(timeout --kill-after=$kill_after 60 "$PYTHON" benchmarks/gpu_check.py plan "$output" --work "$work" \
    ${plan_options[@]+"${plan_options[@]}"})
status=$?
if [[ $status -ne 0 ]]; then
    rm -rf "$work"
    [[ $status -eq 124 || $status -eq 137 ]] && echo "error: checking the GPU took over 60 s" >&2
    exit $((status == 2 ? 2 : 1))
fi
logs="$output/logs"
echo "GPU check: results in $output, scratch in $work"

run_step() { # name limit command: runs under its time limit, output to its log, status to steps.tsv
    local name=$1 limit=$2 command=$3 start status
    start=$SECONDS
    echo "[$(date +%T)] $name (limit ${limit} s): $command"
    timeout --kill-after=$kill_after "$limit" bash -c "$command" >"$logs/$name.log" 2>&1 </dev/null
    status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$work/steps.tsv"
    echo "[$(date +%T)] $name: exit status $status after $((SECONDS - start)) s"
}

group=
while IFS=$'\t' read -r step_group name limit command; do
    if [[ $step_group != "$group" ]]; then
        wait # the steps of one group run at the same time, the groups one after the other
        group=$step_group
    fi
    run_step "$name" "$limit" "$command" &
done <<<"$plan"
wait

timeout --kill-after=$kill_after 20 "$PYTHON" benchmarks/gpu_check.py report "$output" --work "$work"
status=$?
if [[ ! -s $output/gpu_check.json ]]; then
    echo "error: the report was not written (exit status $status); steps (name, exit status, seconds):" >&2
    cat "$work/steps.tsv" >&2
    echo "scratch kept in $work" >&2
    exit 1
fi
if [[ $status -eq 0 ]]; then
    rm -rf "$work"
else
    echo "Not every step passed: see $output/gpu_check.md; scratch kept in $work"
fi
exit $((status == 0 ? 0 : 1))
