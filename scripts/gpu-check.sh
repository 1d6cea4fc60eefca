#!/usr/bin/env bash
# Check dnaflow's CUDA path on a GPU machine in at most 5 minutes, from a bundle built
# elsewhere by scripts/gpu-bundle.sh. Needs here: the NVIDIA driver (nvidia-smi), NVRTC (the
# CUDA toolkit, or the nvidia-cuda-nvrtc wheel PyTorch installs), python3 with torch and
# transformers, coreutils' timeout. No Rust toolchain, no cargo-nextest, no network.
#
# Parts, in this order, each under its own `timeout`, each recorded pass/fail; a failing
# part does not stop the next:
#   detect       nvidia-smi, `dnaflow env --json`, NVRTC, python's torch and transformers
#   unit         the library's model tests on the GPU (DNAFLOW_TEST_DEVICE): forward vs the
#                transformers fixtures, KV cache, attention, save/reload, a few training
#                steps in f32 and bf16 (finite, falling loss, reload gives the same logits)
#   workflow     workflows/ch2-2-gpt2.yaml (default profile) with --device, fresh cache
#   bench        benches/train_bench.py --device cuda against PyTorch on the same GPU:
#                tokens/s, peak RSS, GPU memory (nvidia-smi), ratios
#   integration  tests/models.rs with --device (determinism, kill -9 resume, divergence,
#                BERT, eval and generation), with the time that is left
#   presets      (only when named in --parts) every benches/train_bench.py preset (GPT-2 2×128,
#                4×256, GPT-2 small, BERT) in f32 and bf16, against PyTorch eager and
#                torch.compile, one pair each, with MFU against the GPU's dense bf16 peak
# Every figure and every pass/fail goes into one Markdown file (--out), full logs beside it
# (gpu-logs/). Exit status: 0 when every part passed, 1 when one failed or was skipped for
# lack of time, 2 on bad usage or an unusable bundle.
#
# Usage: bash gpu-check.sh [--bundle DIR|ARCHIVE] [--out FILE] [--device cuda[:N]]
#                          [--budget SECONDS] [--parts detect,unit,workflow,bench,integration]
#                          [--bench-pairs N] [--bench-steps N]
#   --bundle   the bundle directory, or its .tar.xz/.tar.gz (unpacked into a temp dir);
#              default: $GPU_BUNDLE, else the directory of this script when it lies in a
#              bundle, else ../target/gpu-bundle beside it, else ./gpu-bundle
#   --out      results file (default: $OUT/gpu-results.md when $OUT is set, else
#              ./gpu-results.md)
#   --device   cuda (default) or cuda:N
#   --budget   total seconds for all parts (default 300)
#   --parts    a comma-separated subset, to rerun one part
# See docs/development.md (Checking dnaflow on a GPU).
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUNDLE=${GPU_BUNDLE:-}
RESULTS=""
DEVICE=cuda
BUDGET=300
PARTS=detect,unit,workflow,bench,integration
BENCH_PAIRS=2
BENCH_STEPS=100
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() { echo "gpu-check.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bundle | --out | --device | --budget | --parts | --bench-pairs | --bench-steps)
            if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
            ;;
    esac
    case "$1" in
        --bundle) BUNDLE=$2; shift 2 ;;
        --bundle=*) BUNDLE=${1#--bundle=}; shift ;;
        --out) RESULTS=$2; shift 2 ;;
        --out=*) RESULTS=${1#--out=}; shift ;;
        --device) DEVICE=$2; shift 2 ;;
        --device=*) DEVICE=${1#--device=}; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --budget=*) BUDGET=${1#--budget=}; shift ;;
        --parts) PARTS=$2; shift 2 ;;
        --parts=*) PARTS=${1#--parts=}; shift ;;
        --bench-pairs) BENCH_PAIRS=$2; shift 2 ;;
        --bench-steps) BENCH_STEPS=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument \`$1\` (see --help)" ;;
    esac
done

case "$DEVICE" in
    cuda) GPU_INDEX=0 ;;
    cuda:[0-9]*) GPU_INDEX=${DEVICE#cuda:} ;;
    *) die "--device must be cuda or cuda:N, not \`$DEVICE\`" ;;
esac
case "$GPU_INDEX$BUDGET$BENCH_PAIRS$BENCH_STEPS" in
    *[!0-9]* | "") die "--device index, --budget, --bench-pairs and --bench-steps take whole numbers" ;;
esac
[ -n "${PARTS//,/}" ] || die "--parts names no part"
for p in ${PARTS//,/ }; do
    case "$p" in
        detect|unit|workflow|bench|integration|presets) ;;
        *) die "unknown part \`$p\` in --parts (detect, unit, workflow, bench, integration, presets)" ;;
    esac
done
command -v timeout >/dev/null || die "needs coreutils' timeout"

START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
say() { printf '[gpu-check +%3ss] %s\n' "$(elapsed)" "$*"; }

# --- the bundle ------------------------------------------------------------------------
TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/dnaflow-gpu-check.XXXXXX") || die "cannot make a temp dir"
POLLER_PID="" # the GPU memory sampler of the bench part, while it runs
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$POLLER_PID" ]; then
        kill "$POLLER_PID" 2>/dev/null
        wait "$POLLER_PID" 2>/dev/null
        POLLER_PID=""
    fi
    rm -rf "$TMP_ROOT"
}
trap cleanup EXIT

if [ -z "$BUNDLE" ]; then
    for candidate in "$SCRIPT_DIR" "$SCRIPT_DIR/../target/gpu-bundle" "$PWD/gpu-bundle"; do
        if [ -f "$candidate/bin/dnaflow" ]; then
            BUNDLE=$candidate
            break
        fi
    done
    [ -n "$BUNDLE" ] || die "no bundle found (looked in $SCRIPT_DIR, $SCRIPT_DIR/../target/gpu-bundle, ./gpu-bundle); build one with scripts/gpu-bundle.sh and pass --bundle"
fi
case "$BUNDLE" in
    *.tar.xz|*.tar.gz|*.tgz)
        [ -f "$BUNDLE" ] || die "no archive $BUNDLE"
        say "unpacking $BUNDLE into $TMP_ROOT/unpacked"
        mkdir -p "$TMP_ROOT/unpacked"
        tar -C "$TMP_ROOT/unpacked" -xf "$BUNDLE" || die "cannot unpack $BUNDLE"
        found=$(find "$TMP_ROOT/unpacked" -maxdepth 3 -path '*/bin/dnaflow' -type f | head -n 1)
        [ -n "$found" ] || die "$BUNDLE holds no bin/dnaflow"
        BUNDLE=$(dirname "$(dirname "$found")")
        ;;
esac
BUNDLE=$(cd "$BUNDLE" 2>/dev/null && pwd) || die "no bundle directory $BUNDLE"
if grep -q '^incomplete' "$BUNDLE/MANIFEST.txt" 2>/dev/null; then
    die "the bundle $BUNDLE is half-made (scripts/gpu-bundle.sh stopped); rebuild it"
fi
for f in bin/dnaflow test-bin/dnaflow-lib test-bin/models tests/fixtures/models/gpt2/reference.json \
    workflows/ch2-2-gpt2.yaml benches/train_bench.py; do
    [ -e "$BUNDLE/$f" ] || die "the bundle $BUNDLE lacks $f; rebuild it with scripts/gpu-bundle.sh"
done

# A carried file may have lost its execute bit, or lie on a read-only mount: copy it then.
executable() {
    local src=$1 copy
    if [ -x "$src" ]; then
        echo "$src"
        return
    fi
    copy="$TMP_ROOT/exe/$(basename "$src")"
    mkdir -p "$TMP_ROOT/exe"
    cp "$src" "$copy" && chmod u+x "$copy" && echo "$copy"
}
BIN=$(executable "$BUNDLE/bin/dnaflow") || die "cannot make bin/dnaflow executable"
LIB_TESTS=$(executable "$BUNDLE/test-bin/dnaflow-lib") || die "cannot make test-bin/dnaflow-lib executable"
MODEL_TESTS=$(executable "$BUNDLE/test-bin/models") || die "cannot make test-bin/models executable"

# --- results -----------------------------------------------------------------------------
if [ -z "$RESULTS" ]; then
    RESULTS="${OUT:-$PWD}/gpu-results.md"
fi
mkdir -p "$(dirname "$RESULTS")" || die "cannot make the directory of $RESULTS"
RESULTS=$(cd "$(dirname "$RESULTS")" && pwd)/$(basename "$RESULTS")
LOGDIR="$(dirname "$RESULTS")/gpu-logs"
mkdir -p "$LOGDIR" || die "cannot make $LOGDIR"
SECTIONS="$LOGDIR/sections.md"
: >"$SECTIONS"

declare -a P_NAME=() P_STATUS=() P_SECS=() P_LIMIT=() P_NOTE=()
PART_LIMIT=0
PART_START=0

section() { printf '%s\n' "$@" >>"$SECTIONS"; }
# A fenced block of a file's lines (at most $2, the last ones), into the results.
fenced() {
    local file=$1 max=${2:-80}
    section '```'
    if [ -s "$file" ]; then
        tail -n "$max" "$file" >>"$SECTIONS"
    else
        section "(no output)"
    fi
    section '```'
}

write_results() {
    local i failed=0
    {
        echo "# dnaflow GPU check"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(uname -n), $(uname -srm)"
        echo "- bundle: $BUNDLE ($(sed -n 's/^commit: *//p' "$BUNDLE/MANIFEST.txt" 2>/dev/null | head -n 1))"
        echo "- device: $DEVICE; budget ${BUDGET}s; ran for $(elapsed)s"
        echo "- logs: $LOGDIR"
        echo
        echo "## Summary"
        echo
        echo "| part | result | seconds | limit | notes |"
        echo "|---|---|---|---|---|"
        for ((i = 0; i < ${#P_NAME[@]}; i++)); do
            echo "| ${P_NAME[i]} | ${P_STATUS[i]} | ${P_SECS[i]} | ${P_LIMIT[i]}s | ${P_NOTE[i]} |"
            [ "${P_STATUS[i]}" = PASS ] || failed=$((failed + 1))
        done
        echo
        if [ "${#P_NAME[@]}" -eq 0 ]; then
            echo "(no part has finished yet)"
        elif [ "$failed" -eq 0 ]; then
            echo "All ${#P_NAME[@]} parts passed."
        else
            echo "$failed of ${#P_NAME[@]} parts did not pass; see their sections and docs/development.md."
        fi
        echo
        cat "$SECTIONS"
    } >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
}

# begin NAME MAX_SECONDS TITLE: sets PART_LIMIT to what the budget leaves (0: skip).
begin() {
    local name=$1 max=$2 title=$3 left
    left=$((START + BUDGET - $(date +%s) - 15)) # 5 s for timeout's kill, 10 s for the rest
    PART_LIMIT=$max
    [ "$left" -lt "$PART_LIMIT" ] && PART_LIMIT=$left
    PART_START=$(date +%s)
    section "" "## $name: $title" ""
    if [ "$PART_LIMIT" -lt 10 ]; then
        PART_LIMIT=0
        say "SKIP $name: no time left in the ${BUDGET}s budget"
        section "Skipped: no time left in the ${BUDGET}s budget (rerun with --parts $name)."
        return 1
    fi
    say "==> $name: $title (limit ${PART_LIMIT}s)"
    return 0
}

# finish NAME STATUS NOTE
finish() {
    local secs=$(($(date +%s) - PART_START))
    P_NAME+=("$1")
    P_STATUS+=("$2")
    P_SECS+=("$secs")
    P_LIMIT+=("$PART_LIMIT")
    P_NOTE+=("${3//|/\\|}")
    say "$2 $1 (${secs}s)${3:+: $3}"
    section "" "**$1: $2** (${secs}s of ${PART_LIMIT}s)${3:+ — $3}"
    write_results
}

# logged LOG SECONDS CMD...: print the command, run it under timeout into LOG; its status.
logged() {
    local log=$1 secs=$2
    shift 2
    printf '$ %s\n' "$*" >>"$log"
    say "    \$ $* (timeout ${secs}s)"
    timeout --kill-after=5 "$secs" "$@" >>"$log" 2>&1
}

# Why a command under timeout ended, in words.
why() {
    case "$1" in
        0) echo "ok" ;;
        124 | 137) echo "timed out after $2 s" ;;
        *) echo "exit status $1" ;;
    esac
}

wants() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

trap 'say "interrupted"; write_results; exit 1' INT TERM

# --- environment of every part ---------------------------------------------------------
export CARGO_MANIFEST_DIR="$BUNDLE" # where the test binaries find tests/fixtures
export DNAFLOW_BIN="$BIN"           # the binary tests/models.rs runs
export DNAFLOW_TEST_DEVICE="$DEVICE"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_COLOR=1 RUST_BACKTRACE=1
export PYTHONUNBUFFERED=1 # the benchmark's lines reach its log even when it is timed out

# NVRTC: burn's CUDA backend loads libnvrtc at run time. Found through the loader's path,
# a CUDA toolkit, or the nvidia-cuda-nvrtc wheel PyTorch depends on (added to
# LD_LIBRARY_PATH then).
NVRTC=""
# The first existing libnvrtc.so* (not libnvrtc-builtins) among the arguments.
first_nvrtc() {
    local f
    for f in "$@"; do
        case "$(basename "$f")" in libnvrtc-builtins*) continue ;; esac
        if [ -e "$f" ]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}
# Put the directory of $1 first on the loader's path.
prepend_library_path() {
    LD_LIBRARY_PATH="$(dirname "$1")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
}
find_nvrtc() {
    local d hit
    hit=$(ldconfig -p 2>/dev/null | grep -m 1 -o '/[^ ]*libnvrtc\.so[.0-9]*$' || true)
    if [ -n "$hit" ]; then
        NVRTC="$hit (loader cache)"
        return 0
    fi
    while IFS= read -r d; do
        [ -n "$d" ] || continue
        hit=$(first_nvrtc "$d"/libnvrtc.so*)
        if [ -n "$hit" ]; then
            NVRTC="$hit (LD_LIBRARY_PATH)"
            return 0
        fi
    done < <(printf '%s\n' "${LD_LIBRARY_PATH:-}" | tr ':' '\n')
    for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-*; do
        [ -n "$d" ] || continue
        hit=$(first_nvrtc "$d"/lib64/libnvrtc.so* "$d"/lib/libnvrtc.so*)
        if [ -n "$hit" ]; then
            prepend_library_path "$hit"
            NVRTC="$hit (CUDA toolkit; added to LD_LIBRARY_PATH)"
            return 0
        fi
    done
    hit=$(timeout 20 "$PYTHON" - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
for root in roots:
    for path in sorted(glob.glob(os.path.join(root, "nvidia", "**", "libnvrtc.so*"), recursive=True)):
        if "builtins" not in os.path.basename(path):
            print(path)
            sys.exit(0)
PY
)
    if [ -n "$hit" ]; then
        prepend_library_path "$hit"
        NVRTC="$hit (python wheel; added to LD_LIBRARY_PATH)"
        return 0
    fi
    return 1
}
find_nvrtc
say "bundle $BUNDLE, device $DEVICE, results $RESULTS"
say "NVRTC: ${NVRTC:-not found}"
write_results

# Test verdicts of a libtest log, and the figures its tests printed (`figure: …` lines),
# into the results.
libtest_summary() {
    local log=$1
    if grep -q '^figure: ' "$log"; then
        section "Figures (measured by the tests):" ""
        grep '^figure: ' "$log" | sed 's/^figure: /- /' >>"$SECTIONS"
        section ""
    fi
    section "Tests:" '```'
    grep -E '^test .* \.\.\. ' "$log" >>"$SECTIONS" || section "(no test ran)"
    grep -E '^test result: ' "$log" >>"$SECTIONS" || true
    section '```'
    if grep -q -E 'panicked at|^failures:' "$log"; then
        section "" "Failures (panic messages):" '```'
        grep -A 4 'panicked at' "$log" | head -n 60 >>"$SECTIONS"
        section '```'
    fi
}

# "N passed, M failed" of a libtest log, or "no test ran".
libtest_counts() {
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 passed, \2 failed, \3 ignored/p' "$1" | tail -n 1
}

# --- 1. detect ---------------------------------------------------------------------------
part_detect() {
    local log="$LOGDIR/detect.log" status=PASS notes="" rc gpus
    : >"$log"
    begin detect 40 "what this machine offers" || { finish detect SKIP "no time left"; return; }
    logged "$log" 10 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,compute_cap --format=csv
    rc=$?
    if [ "$rc" -ne 0 ]; then
        status=FAIL
        notes="${notes:+$notes; }nvidia-smi: $(why "$rc" 10)"
    fi
    logged "$log" 10 nvidia-smi
    logged "$log" 10 "$BIN" env --json
    rc=$?
    if [ "$rc" -ne 0 ]; then
        status=FAIL
        notes="${notes:+$notes; }dnaflow env: $(why "$rc" 10)"
    fi
    gpus=$(find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "GPUs in /proc/driver/nvidia/gpus (what dnaflow counts): $gpus; CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}" >>"$log"
    if [ "$gpus" -le "$GPU_INDEX" ]; then
        status=FAIL
        notes="${notes:+$notes; }dnaflow sees $gpus GPU(s) in /proc/driver/nvidia/gpus, $DEVICE needs $((GPU_INDEX + 1))"
    fi
    echo "NVRTC: ${NVRTC:-not found}; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >>"$log"
    if [ -z "$NVRTC" ]; then
        status=FAIL
        notes="${notes:+$notes; }no libnvrtc.so found (install the CUDA toolkit or pip's nvidia-cuda-nvrtc-cu12)"
    fi
    logged "$log" 30 "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| transformers", transformers.__version__)'
    rc=$?
    if [ "$rc" -ne 0 ] || ! grep -q 'available True' "$log"; then
        status=FAIL
        notes="${notes:+$notes; }$PYTHON lacks transformers or a CUDA torch: the bench and the transformers reload will fail"
    fi
    section "- NVRTC: ${NVRTC:-not found}" "- bundle: $(head -n 4 "$BUNDLE/MANIFEST.txt" 2>/dev/null | tr '\n' ' ')" ""
    fenced "$log" 120
    finish detect "$status" "${notes:-GPU, driver, NVRTC, torch and transformers found}"
}

# --- 2. model unit tests -------------------------------------------------------------------
part_unit() {
    local log="$LOGDIR/unit.log" rc status note counts
    : >"$log"
    begin unit 80 "model unit tests on $DEVICE (forward vs transformers, training f32/bf16, save/reload)" ||
        { finish unit SKIP "no time left"; return; }
    # One thread: the figures come out in order and the kernels compile once.
    logged "$log" "$PART_LIMIT" "$LIB_TESTS" models:: --test-threads=1 --show-output
    rc=$?
    libtest_summary "$log"
    counts=$(libtest_counts "$log")
    note="${counts:-no test result}"
    status=PASS
    if [ "$rc" -ne 0 ]; then
        status=FAIL
        note="$(why "$rc" "$PART_LIMIT"); $note"
    elif ! grep -q '^figure: .* on cuda' "$log"; then
        status=FAIL
        note="no figure was measured on CUDA (was DNAFLOW_TEST_DEVICE honoured?); $note"
    elif grep -q 'skipping bf16' "$log"; then
        status=FAIL
        note="the bf16 test skipped itself; $note"
    fi
    section "" "Full log: $log (tail below)."
    fenced "$log" 40
    finish unit "$status" "$note"
}

# --- 3. ch2-2 workflow -----------------------------------------------------------------------
part_workflow() {
    local log="$LOGDIR/workflow.log" rc status note work report
    : >"$log"
    begin workflow 80 "workflows/ch2-2-gpt2.yaml, default profile, --device $DEVICE, fresh cache" ||
        { finish workflow SKIP "no time left"; return; }
    work="$TMP_ROOT/workflow"
    mkdir -p "$work"
    report="$LOGDIR/ch2-2-report.json"
    rm -f "$report"
    logged "$log" "$PART_LIMIT" "$BIN" --cache "$work/cache" check "$BUNDLE/workflows/ch2-2-gpt2.yaml" \
        --device "$DEVICE" --report "$report"
    rc=$?
    status=PASS
    note="dnaflow check: $(why "$rc" "$PART_LIMIT")"
    [ "$rc" -eq 0 ] || status=FAIL
    # The run records and every step's log (the cache itself goes with the temp dir).
    if [ -d "$work/cache/runs" ]; then
        rm -rf "$LOGDIR/ch2-2-runs"
        cp -R "$work/cache/runs" "$LOGDIR/ch2-2-runs"
    fi
    if [ -s "$report" ]; then
        "$PYTHON" - "$report" "$work/tokens_per_s" >"$work/table.md" 2>>"$log" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for s in r.get("steps", []):
        if s.get("name") == "gpt2" and "tokens_per_s" in (s.get("metrics") or {}):
            f.write(f"{s['metrics']['tokens_per_s']:.0f}")
print("| step | status | seconds |")
print("|---|---|---|")
for s in r.get("steps", []):
    print(f"| {s.get('name')} | {s.get('status')} | {float(s.get('seconds') or 0):.1f} |")
print()
keys = ["train_loss", "valid_loss", "valid_bits_per_base", "tokens_per_s", "seconds", "steps",
        "parameters", "bits_per_base", "gain_bits_per_base", "perplexity"]
for s in r.get("steps", []):
    m = s.get("metrics") or {}
    shown = {k: m[k] for k in keys if k in m}
    if shown and s.get("name") in ("gpt2", "test", "markov"):
        print(f"- {s['name']}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
PY
        section "Figures (from the run report $report):" ""
        cat "$work/table.md" >>"$SECTIONS"
        local tps
        tps=$(cat "$work/tokens_per_s" 2>/dev/null)
        [ -n "$tps" ] && note="$note; gpt2 $tps tokens/s"
    else
        section "No run report was written."
    fi
    section "" "Full log: $log (tail below)."
    fenced "$log" 40
    finish workflow "$status" "$note"
}

# --- 4. training benchmark ---------------------------------------------------------------------
# Samples the GPU's memory.used, and which of the two trainers is running, every 0.25 s.
gpu_poller() {
    local out=$1 who used
    while :; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU_INDEX" 2>/dev/null | head -n 1 | tr -d ' ')
        who=none
        if command -v pgrep >/dev/null; then
            if pgrep -f -- 'train_bench.py --child' >/dev/null 2>&1; then
                who=pytorch
            elif pgrep -f -- 'dnaflow run ' >/dev/null 2>&1; then
                who=dnaflow
            fi
        else
            who=unknown
        fi
        printf '%s %s\n' "$who" "${used:-NA}" >>"$out"
        sleep 0.25
    done
}

part_bench() {
    local log="$LOGDIR/bench.log" rc status note samples baseline mem env_prefix=()
    : >"$log"
    begin bench 90 "benches/train_bench.py --device cuda vs PyTorch, $BENCH_PAIRS pairs of $BENCH_STEPS steps" ||
        { finish bench SKIP "no time left"; return; }
    # The benchmark says `cuda` (PyTorch's and dnaflow's first visible GPU): show it the one chosen.
    if [ "$GPU_INDEX" != 0 ] && [ -z "${CUDA_VISIBLE_DEVICES+set}" ]; then
        env_prefix=(env CUDA_VISIBLE_DEVICES="$GPU_INDEX")
    fi
    samples="$LOGDIR/bench-gpu-memory.txt"
    : >"$samples"
    baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU_INDEX" 2>/dev/null | head -n 1 | tr -d ' ')
    gpu_poller "$samples" &
    POLLER_PID=$!
    logged "$log" "$PART_LIMIT" ${env_prefix[@]+"${env_prefix[@]}"} "$PYTHON" "$BUNDLE/benches/train_bench.py" \
        --device cuda --bin "$BIN" --pairs "$BENCH_PAIRS" --steps "$BENCH_STEPS"
    rc=$?
    kill "$POLLER_PID" 2>/dev/null
    wait "$POLLER_PID" 2>/dev/null
    POLLER_PID=""
    status=PASS
    note="$(why "$rc" "$PART_LIMIT")"
    [ "$rc" -eq 0 ] || status=FAIL
    mem=$(awk -v base="${baseline:-0}" '
        $2 ~ /^[0-9]+$/ { if ($2 > max[$1]) max[$1] = $2; n[$1]++ }
        END {
            for (w in max) if (w != "none")
                printf "%s %d MiB peak (%d above the idle %d MiB, %d samples); ", w, max[w], max[w] - base, base, n[w]
        }' "$samples" | sed 's/; $//')
    section "Benchmark output (tokens/s and peak RSS per process; ratios > 1 favour dnaflow):" ""
    fenced "$log" 40
    section "" "GPU memory (nvidia-smi memory.used while each trainer ran; includes its CUDA context): ${mem:-no samples}"
    local line
    line=$(grep -m 1 '^speed ratio' "$log" || true)
    [ -n "$line" ] && note="$note; $line"
    line=$(grep -m 1 '^memory ratio' "$log" || true)
    [ -n "$line" ] && note="$note; $line"
    finish bench "$status" "$note"
}

# --- 5. integration tests ------------------------------------------------------------------------
part_integration() {
    local log="$LOGDIR/integration.log" rc status note counts
    : >"$log"
    begin integration 120 "tests/models.rs with --device $DEVICE (the time that is left)" ||
        { finish integration SKIP "no time left"; return; }
    logged "$log" "$PART_LIMIT" "$MODEL_TESTS" --show-output
    rc=$?
    libtest_summary "$log"
    counts=$(libtest_counts "$log")
    note="${counts:-no test result}"
    status=PASS
    if [ "$rc" -ne 0 ]; then
        status=FAIL
        note="$(why "$rc" "$PART_LIMIT"); $note"
    fi
    section "" "Full log: $log (tail below)."
    fenced "$log" 40
    finish integration "$status" "$note"
}

# --- 6. every training preset, f32 and bf16, eager and compiled (opt-in) -----------------------
part_presets() {
    local log="$LOGDIR/presets.log" rc status=PASS note="" limit precision compile flag
    : >"$log"
    begin presets 280 "benches/train_bench.py --preset all: f32 and bf16, PyTorch eager and torch.compile" ||
        { finish presets SKIP "no time left"; return; }
    limit=$((PART_LIMIT / 4))
    for compile in "" --torch-compile; do
        for precision in f32 bf16; do
            flag="$precision${compile:+ compiled}"
            logged "$log" "$limit" "$PYTHON" "$BUNDLE/benches/train_bench.py" --device cuda \
                --bin "$BIN" --preset all --pairs 1 --precision "$precision" ${compile:+"$compile"}
            rc=$?
            if [ "$rc" -ne 0 ]; then
                status=FAIL
                note="$note$flag: $(why "$rc" "$limit"); "
            fi
        done
    done
    section "Every preset (tokens/s, GFLOP/s and % of the GPU's dense bf16 peak per side):" ""
    fenced "$log" 120
    finish presets "$status" "${note:-all ran}"
}

if wants detect; then part_detect; fi
if wants unit; then part_unit; fi
if wants workflow; then part_workflow; fi
if wants bench; then part_bench; fi
if wants integration; then part_integration; fi
if wants presets; then part_presets; fi

write_results
say "results: $RESULTS"
failed=0
for ((i = 0; i < ${#P_NAME[@]}; i++)); do
    [ "${P_STATUS[i]}" = PASS ] || failed=$((failed + 1))
done
if [ "$failed" -gt 0 ]; then
    say "$failed part(s) did not pass"
    exit 1
fi
say "all parts passed"
exit 0
