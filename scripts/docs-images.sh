#!/usr/bin/env bash
# Regenerate the pictures in docs/img from real runs of the default profiles:
#   ch2-2-dag.svg            the step graph of chapter 2.2 (from `dnaflow report`)
#   ch2-2-gpt2-loss.svg      the GPT-2's training and validation loss (model.pretrain's `plot`)
#   ch3-1-splice-confusion.svg  the fine-tuned splice classifier's confusion matrix
#   ch3-1-splice-loss.svg    its training and validation loss (model.finetune's `plot`)
#   ch4-2-curves.svg         one and two ranks' loss curves overlaid, and their difference
#
# Usage: scripts/docs-images.sh [ch2-2|ch3-1|ch4-2]...   (default: all three; each trains models for
# minutes on 2 cores, see docs/run-times.md). Uses the cache in $DNAFLOW_CACHE (default
# ./cache), so pictures of runs already made come straight from it. $DNAFLOW picks the binary
# (default: target/debug/dnaflow; build it first with `cargo build`).
set -euo pipefail
cd "$(dirname "$0")/.."
dnaflow=${DNAFLOW:-target/debug/dnaflow}
img=docs/img
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || chapters=(ch2-2 ch3-1 ch4-2)

# The graph as the report draws it, standalone: its <svg> with the report's styles for it.
dag_svg() {
    python3 - "$1" "$2" <<'PY'
import re, sys
html = open(sys.argv[1], encoding="utf-8").read()
svg = re.search(r'<svg class="dag".*?</svg>', html, re.S).group(0)
# Links to the report's own sections mean nothing outside it.
svg = re.sub(r'<a href="#[^"]*">|</a>', "", svg)
style = ("<style>text{font:12px system-ui,sans-serif;fill:#fff}"
         "path{fill:none;stroke:#9aa;stroke-width:1.2}</style>")
svg = svg.replace(">", ">" + style, 1)
open(sys.argv[2], "w", encoding="utf-8").write(svg + "\n")
PY
}

for ch in "${chapters[@]}"; do
    case $ch in
    ch2-2)
        wf=workflows/ch2-2-gpt2.yaml
        "$dnaflow" run "$wf"
        cp "$("$dnaflow" out "$wf" gpt2.plot)" "$img/ch2-2-gpt2-loss.svg"
        tmp=$(mktemp -d)
        "$dnaflow" report "$wf" -o "$tmp/report.html"
        dag_svg "$tmp/report.html" "$img/ch2-2-dag.svg"
        rm -r "$tmp"
        ;;
    ch3-1)
        wf=workflows/ch3-1-classify.yaml
        "$dnaflow" run "$wf"
        cp "$("$dnaflow" out "$wf" splice_finetuned_score.confusion)" "$img/ch3-1-splice-confusion.svg"
        cp "$("$dnaflow" out "$wf" splice_finetuned.plot)" "$img/ch3-1-splice-loss.svg"
        ;;
    ch4-2)
        wf=workflows/ch4-2-distributed.yaml
        "$dnaflow" run "$wf"
        cp "$("$dnaflow" out "$wf" compare.plot)" "$img/ch4-2-curves.svg"
        ;;
    *)
        echo "unknown chapter $ch (ch2-2, ch3-1 or ch4-2)" >&2
        exit 2
        ;;
    esac
done
chmod 644 "$img"/*.svg   # copies of read-only cache files
ls -l "$img"/*.svg
