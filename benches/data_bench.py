#!/usr/bin/env python3
"""Data benchmark: dnaflow vs Python `datasets` + `tokenizers` on the same FASTA file.

What it measures
----------------
A FASTA corpus of --mb megabytes is made from the shipped real genomes (data/genomes/*.fa.gz,
repeated as separate records until the size is reached). Then, each as a whole process, with
wall time and peak RSS of that process (os.wait4's ru_maxrss):

    load   FASTA -> table of 1000-bp windows, written as parquet
           dnaflow:  `data.load` (format fasta, window 1000)       -> table.parquet
           python:   datasets.Dataset.from_generator(windows)     -> .to_parquet()
    train  byte-level BPE tokenizer training on those windows (vocab --vocab, min frequency 2)
           dnaflow:  `tokenizer.train` (model bpe) on the table
           python:   tokenizers ByteLevelBPETokenizer().train_from_iterator(windows)

and prints MB/s for both and the ratios dnaflow/python (throughput; higher is better) and
python/dnaflow (peak memory; higher is better). Target: >= 1.0x on both.

dnaflow's `train` run reuses the cached `load` step (a few ms of planning), so its time is the
training. Python's `train` reads the windows from the parquet file its `load` wrote.

How to run
----------
    cargo build --release
    python3 benches/data_bench.py                 # 32 MB, installs datasets/tokenizers if missing
    python3 benches/data_bench.py --mb 8 --repeat 1
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def binary() -> Path:
    env = os.environ.get("DNAFLOW_BIN")
    for p in [env, ROOT / "target/release/dnaflow", ROOT / "target/debug/dnaflow"]:
        if p and Path(p).is_file():
            return Path(p)
    sys.exit("no dnaflow binary: run `cargo build --release` (or set DNAFLOW_BIN)")


def ensure(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        print(f"installing {package} from PyPI ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)


def make_fasta(path: Path, megabytes: float) -> int:
    """Real genomes, repeated as new records until `megabytes` of sequence; returns bases."""
    genomes = []
    for f in sorted((ROOT / "data/genomes").glob("*.fa.gz")):
        with gzip.open(f, "rt") as fh:
            genomes.append((f.name.split(".")[0], "".join(l.strip() for l in fh if not l.startswith(">"))))
    target = int(megabytes * 1_000_000)
    bases = 0
    copy = 0
    with open(path, "w") as out:
        while bases < target:
            for name, seq in genomes:
                seq = seq[: target - bases]
                if not seq:
                    break
                out.write(f">{name}_copy{copy}\n")
                for i in range(0, len(seq), 60):
                    out.write(seq[i : i + 60] + "\n")
                bases += len(seq)
            copy += 1
    return bases


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


PY_LOAD = textwrap.dedent(
    """
    import sys, datasets
    fasta, out, w = sys.argv[1], sys.argv[2], 1000
    def windows():
        def emit(rid, seq):
            for i in range(0, len(seq) - w + 1, w):
                yield {"id": f"{rid}:{i+1}-{i+w}", "sequence": seq[i:i+w]}
        rid, parts = None, []
        with open(fasta) as fh:
            for line in fh:
                if line.startswith(">"):
                    if rid is not None:
                        yield from emit(rid, "".join(parts).upper())
                    rid, parts = line[1:].split()[0], []
                else:
                    parts.append(line.strip())
        if rid is not None:
            yield from emit(rid, "".join(parts).upper())
    ds = datasets.Dataset.from_generator(windows, cache_dir=sys.argv[3])
    ds.to_parquet(out)
    """
)

PY_TRAIN = textwrap.dedent(
    """
    import sys, pyarrow.parquet as pq
    from tokenizers import ByteLevelBPETokenizer
    table = pq.read_table(sys.argv[1], columns=["sequence"])
    def lines():
        for batch in table.to_batches(16384):
            yield from batch.column(0).to_pylist()
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(lines(), vocab_size=int(sys.argv[2]), min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(sys.argv[3])
    """
)


def workflow(fasta: Path, vocab: int) -> str:
    return textwrap.dedent(
        f"""
        name: data-bench
        steps:
          load:
            uses: data.load
            with: {{ path: {fasta}, format: fasta, window: 1000 }}
          tok:
            uses: tokenizer.train
            with: {{ input: "${{{{ steps.load.table }}}}", model: bpe, vocab_size: {vocab}, min_frequency: 2 }}
        """
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=32, help="megabytes of sequence (default 32)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown")
    args = ap.parse_args()
    ensure("datasets", "datasets")
    ensure("tokenizers", "tokenizers")
    dnaflow = binary()
    import datasets, tokenizers  # noqa: E401  (versions for the header)

    print(f"dnaflow {dnaflow}; datasets {datasets.__version__}, tokenizers {tokenizers.__version__}; "
          f"python {sys.version.split()[0]}; {os.cpu_count()} cpus; median of {args.repeat}")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {"load": {}, "train": {}}
    with tempfile.TemporaryDirectory(prefix="dnaflow-data-bench-") as tmp:
        tmp = Path(tmp)
        fasta = tmp / "corpus.fa"
        bases = make_fasta(fasta, args.mb)
        mb = bases / 1e6
        (tmp / "wf.yaml").write_text(workflow(fasta, args.vocab))
        (tmp / "load.py").write_text(PY_LOAD)
        (tmp / "train.py").write_text(PY_TRAIN)
        print(f"corpus: {mb:.1f} Mb of real genome sequence in {fasta.stat().st_size / 1e6:.1f} MB of FASTA")
        for r in range(args.repeat):
            cache = tmp / f"cache{r}"
            env = dict(os.environ, DNAFLOW_CACHE=str(cache))
            results["load"].setdefault("dnaflow", []).append(timed([str(dnaflow), "run", "wf.yaml", "load", "-q"], tmp, env))
            results["train"].setdefault("dnaflow", []).append(timed([str(dnaflow), "run", "wf.yaml", "tok", "-q"], tmp, env))
            pq = tmp / f"py{r}.parquet"
            results["load"].setdefault("python", []).append(
                timed([sys.executable, "load.py", str(fasta), str(pq), str(tmp / f"hf{r}")], tmp))
            results["train"].setdefault("python", []).append(
                timed([sys.executable, "train.py", str(pq), str(args.vocab), str(tmp / f"tok{r}.json")], tmp))
    print(f"\n{'task':<6} {'tool':<8} {'seconds':>8} {'MB/s':>8} {'peak MiB':>9}")
    summary = {}
    for task, tools in results.items():
        for tool, runs in tools.items():
            wall = statistics.median(w for w, _ in runs)
            rss = statistics.median(m for _, m in runs)
            summary[(task, tool)] = (wall, rss)
            print(f"{task:<6} {tool:<8} {wall:>8.2f} {mb / wall:>8.2f} {rss:>9.0f}")
    print("\nratios (target >= 1.0x):")
    for task in results:
        (dw, dm), (pw, pm) = summary[(task, "dnaflow")], summary[(task, "python")]
        print(f"  {task:<6} throughput dnaflow/python {pw / dw:5.2f}x   peak memory python/dnaflow {pm / dm:5.2f}x")


if __name__ == "__main__":
    main()
