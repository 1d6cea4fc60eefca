#!/usr/bin/env bash
# Build, on a machine with the Rust toolchain (no GPU, no CUDA needed), everything
# scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain and no network:
#
#   bin/dnaflow              release binary, --features cuda
#   test-bin/dnaflow-lib     the library's unit tests (src/**), --release --features cuda
#   test-bin/models          tests/models.rs, --release --features cuda
#   gpu-check.sh             the check itself (a copy of scripts/gpu-check.sh)
#   tests/fixtures/ workflows/ data/ benches/   what the tests, ch2-2 and the benchmark read
#   MANIFEST.txt             commit, toolchain, features, files with sizes and sha256
#
# The bundle directory stands in for the source tree on the GPU machine: gpu-check.sh sets
# CARGO_MANIFEST_DIR to it (the tests read their fixtures there) and DNAFLOW_BIN to its
# bin/dnaflow (the integration tests' compile-time binary path does not exist there).
#
# Usage: scripts/gpu-bundle.sh [--out DIR] [--strip] [--tar]
#   --out DIR  where to put the bundle (default: target/gpu-bundle; target/ is git-ignored)
#   --strip    strip debug info from the three executables (smaller to carry, no line numbers
#              in backtraces)
#   --tar      also write DIR.tar.xz (DIR.tar.gz without xz); gpu-check.sh --bundle takes
#              either the directory or the archive
# See docs/development.md (Checking dnaflow on a GPU).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR="$ROOT/target/gpu-bundle"
STRIP=0
TAR=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR=${2:?--out needs a directory}; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --strip) STRIP=1; shift ;;
        --tar) TAR=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-bundle.sh: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
run() { printf '    $ %s\n' "$*" >&2; "$@"; }

for tool in cargo python3; do
    command -v "$tool" >/dev/null || { echo "gpu-bundle.sh: needs $tool" >&2; exit 2; }
done

# Only ever replace a directory this script made (it holds MANIFEST.txt) or an empty one.
OUT_DIR=$(python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$OUT_DIR")
if [ -e "$OUT_DIR" ]; then
    if [ -f "$OUT_DIR/MANIFEST.txt" ] || [ -z "$(ls -A "$OUT_DIR")" ]; then
        rm -rf "$OUT_DIR"
    else
        echo "gpu-bundle.sh: $OUT_DIR exists and is not a bundle (no MANIFEST.txt); choose another --out" >&2
        exit 2
    fi
fi

cd "$ROOT"
say "building the CUDA release binary (burn's CUDA backend needs no CUDA toolkit to build)"
run cargo build --release --features cuda --bin dnaflow

say "building the test executables (unit tests of the library, tests/models.rs)"
ARTIFACTS=$(mktemp "${TMPDIR:-/tmp}/gpu-bundle-artifacts.XXXXXX")
trap 'rm -f "$ARTIFACTS"' EXIT
printf '    $ %s\n' "cargo test --release --features cuda --no-run --message-format=json --lib --test models > $ARTIFACTS" >&2
cargo test --release --features cuda --no-run --message-format=json --lib --test models >"$ARTIFACTS"

# The executables cargo reports: the library's test harness and the `models` test target.
read_exe() {
    python3 - "$ARTIFACTS" "$1" <<'PY'
import json, sys
path, want = sys.argv[1], sys.argv[2]
found = []
for line in open(path):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    target = msg["target"]
    kinds = target.get("kind", [])
    if want == "lib" and "lib" in kinds:
        found.append(msg["executable"])
    elif want != "lib" and kinds == ["test"] and target.get("name") == want:
        found.append(msg["executable"])
if len(found) != 1:
    sys.exit(f"expected one `{want}` test executable in cargo's output, found {found}")
print(found[0])
PY
}
LIB_TESTS=$(read_exe lib)
MODEL_TESTS=$(read_exe models)
BIN="$ROOT/target/release/dnaflow"
[ -x "$BIN" ] || { echo "gpu-bundle.sh: $BIN was not built" >&2; exit 1; }

say "copying into $OUT_DIR"
mkdir -p "$OUT_DIR/bin" "$OUT_DIR/test-bin" "$OUT_DIR/tests"
# Replaced by the real manifest at the end; marks a half-made bundle (gpu-check.sh refuses it,
# the next run of this script replaces it).
echo "incomplete: scripts/gpu-bundle.sh did not finish" >"$OUT_DIR/MANIFEST.txt"
run cp "$BIN" "$OUT_DIR/bin/dnaflow"
run cp "$LIB_TESTS" "$OUT_DIR/test-bin/dnaflow-lib"
run cp "$MODEL_TESTS" "$OUT_DIR/test-bin/models"
run cp -R tests/fixtures "$OUT_DIR/tests/fixtures"
for d in workflows data benches; do
    run cp -R "$d" "$OUT_DIR/$d"
done
run cp scripts/gpu-check.sh "$OUT_DIR/gpu-check.sh"
run cp docs/development.md "$OUT_DIR/GPU.md"
chmod +x "$OUT_DIR/gpu-check.sh" "$OUT_DIR/bin/dnaflow" "$OUT_DIR/test-bin/"*
find "$OUT_DIR" -name __pycache__ -type d -prune -exec rm -rf {} +

if [ "$STRIP" = 1 ]; then
    if command -v strip >/dev/null; then
        say "stripping debug info"
        run strip --strip-debug "$OUT_DIR/bin/dnaflow" "$OUT_DIR/test-bin/dnaflow-lib" "$OUT_DIR/test-bin/models"
    else
        echo "gpu-bundle.sh: no \`strip\` here; the executables keep their debug info" >&2
    fi
fi

say "writing MANIFEST.txt"
{
    echo "dnaflow GPU bundle (scripts/gpu-bundle.sh; run: bash gpu-check.sh, see GPU.md)"
    echo "built:    $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        commit="$commit (with uncommitted changes)"
    fi
    echo "commit:   $commit"
    echo "rustc:    $(rustc -V 2>/dev/null || echo unknown)"
    echo "cargo:    $(cargo -V 2>/dev/null || echo unknown)"
    echo "features: cuda (release profile)"
    echo "stripped: $([ "$STRIP" = 1 ] && echo yes || echo no)"
    echo "lib tests from:    $LIB_TESTS"
    echo "models tests from: $MODEL_TESTS"
    echo
    echo "files (bytes, sha256):"
    (cd "$OUT_DIR" && find . -type f ! -name MANIFEST.txt | LC_ALL=C sort | while read -r f; do
        printf '%12s  %s  %s\n' "$(wc -c <"$f" | tr -d ' ')" "$(sha256sum "$f" | cut -d' ' -f1)" "${f#./}"
    done)
} >"$OUT_DIR/MANIFEST.txt"

if [ "$TAR" = 1 ]; then
    parent=$(dirname "$OUT_DIR")
    name=$(basename "$OUT_DIR")
    if command -v xz >/dev/null; then
        archive="$OUT_DIR.tar.xz"
        say "archiving to $archive"
        run tar -C "$parent" -cf - "$name" | xz -T0 -6 >"$archive"
    else
        archive="$OUT_DIR.tar.gz"
        say "archiving to $archive"
        run tar -C "$parent" -czf "$archive" "$name"
    fi
    ls -l "$archive"
fi

say "bundle ready: $OUT_DIR ($(du -sh "$OUT_DIR" | cut -f1))"
echo "    carry it to the GPU machine, then there:  bash $(basename "$OUT_DIR")/gpu-check.sh --out gpu-results.md"
