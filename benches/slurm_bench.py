#!/usr/bin/env python3
"""Scheduler overhead per Slurm job: dnaflow's Slurm executor against Snakemake's.

    bash tests/slurm/start.sh                 # a real single-node Slurm (root, Debian)
    python3 benches/slurm_bench.py --jobs 10 --pairs 3

Both tools run the same workflow on the same cluster: N independent one-line jobs, from
start to every job collected (submit -> start -> finished -> outputs seen). Each pair runs
both, in alternating order, each on fresh state. Printed: seconds per job for each tool, and
Snakemake's over dnaflow's as the median and range over pairs.

Snakemake: `snakemake-executor-plugin-slurm` (pip, installed if missing), job states from
`squeue` (its default, `sacct`, needs Slurm's accounting storage, which a cluster without
slurmdbd lacks: jobs are then never collected), and its first status check after 1 s
instead of its default 40 s, which would otherwise be most of what is measured. dnaflow:
`--executor slurm` with its default poll of 1 s. The binary is `$DNAFLOW_BIN`, else
target/release/dnaflow, else target/debug/dnaflow.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    for b in (os.environ.get("DNAFLOW_BIN"), f"{ROOT}/target/release/dnaflow", f"{ROOT}/target/debug/dnaflow"):
        if b and os.path.exists(b):
            return b
    sys.exit("no dnaflow binary: cargo build first (or set DNAFLOW_BIN)")


def timed(cmd, cwd):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10, help="independent jobs per run")
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        sys.exit("no Slurm cluster answers here: start one with `bash tests/slurm/start.sh` (root)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "snakemake",
                        "snakemake-executor-plugin-slurm"], check=True)
    dnaflow = binary()
    work = tempfile.mkdtemp(prefix="dnaflow-slurm-bench-")
    steps = "".join(f"  s{i}:\n    run: echo {i} > ${{{{ out }}}}/x.txt\n" for i in range(a.jobs))
    with open(f"{work}/wf.yaml", "w") as f:
        f.write(f"name: slurm-bench\nsteps:\n{steps}")
    with open(f"{work}/Snakefile", "w") as f:
        f.write(f"rule all:\n    input: expand('out/{{i}}.txt', i=range({a.jobs}))\n"
                "rule one:\n    output: 'out/{i}.txt'\n    shell: 'echo {wildcards.i} > {output}'\n")
    smk = [shutil.which("snakemake") or "snakemake", "--executor", "slurm", "--jobs", str(a.jobs),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           "--default-resources", "mem_mb=1000", "runtime=5", "cpus_per_task=1", "-q"]
    ours, theirs = [], []
    for pair in range(a.pairs):
        def run_dnaflow():
            cache = f"{work}/cache"
            shutil.rmtree(cache, ignore_errors=True)
            return timed([dnaflow, "run", "wf.yaml", "--executor", "slurm", "-j", str(a.jobs),
                          "-q", "--cache", cache], work)

        def run_snakemake():
            for d in ("out", ".snakemake"):
                shutil.rmtree(f"{work}/{d}", ignore_errors=True)
            return timed(smk, work)

        order = [("dnaflow", run_dnaflow), ("snakemake", run_snakemake)]
        if pair % 2:
            order.reverse()
        for name, fn in order:
            dt = fn()
            (ours if name == "dnaflow" else theirs).append(dt)
            print(f"pair {pair + 1}: {name:<9} {dt:6.2f} s for {a.jobs} jobs ({dt / a.jobs:.3f} s/job)",
                  flush=True)
    ratios = [t / o for o, t in zip(ours, theirs)]
    print(f"\n{a.jobs} jobs per run, {a.pairs} pairs, {os.cpu_count()} CPUs on the node")
    print(f"dnaflow   {statistics.median(ours) / a.jobs:.3f} s/job (median)")
    print(f"snakemake {statistics.median(theirs) / a.jobs:.3f} s/job (median)")
    print(f"snakemake / dnaflow: {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
