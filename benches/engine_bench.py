#!/usr/bin/env python3
"""Engine overhead benchmark: dnaflow vs Snakemake on the same synthetic DAG.

What it measures
----------------
For each size N (default 10, 100, 1000) the script writes the same DAG twice,
once as a dnaflow workflow and once as a Snakefile:

    step 0 writes a tiny file; step i > 0 depends on steps i-1 and i//2
    (deduplicated) and writes `cat <parents> | wc -c` into its own tiny file.

Both tools first build everything once (not timed). Then it times, as wall
time of the whole process (time.perf_counter around subprocess.run), after one
warm-up run, the median of K runs (K = --repeat, default 5) of:

    noop  the rerun with nothing changed, which must execute nothing
          dnaflow:   dnaflow run FILE --cache DIR -q
          snakemake: snakemake --cores 1 -q
    plan  the dry run on the built state
          dnaflow:   dnaflow plan FILE --cache DIR
          snakemake: snakemake -n -q

and prints ratio = snakemake_ms / dnaflow_ms, both measured in this run.

It also builds a --plan-size (default 10,000) step workflow with dnaflow and
times `dnaflow plan` on it (built state, the target below) and on an empty
cache ("plan-cold"). Building 10,000 steps with Snakemake takes minutes
(about 3.5 min on a 2-core machine), so on that size Snakemake is only timed
on the dry run of an unbuilt directory (compared with dnaflow's plan-cold),
and skipped if one dry run takes longer than --snakemake-timeout seconds.

Scale (--scale-sizes, default 1,000 / 10,000 / 100,000; dnaflow only, since
Snakemake needs minutes to build even 10,000 steps): the same DAG is built once,
then the no-op rerun and `plan` are timed with each process's own peak RSS
(os.wait4), and printed as ms per step so growth is visible. The 100,000-step
file is about 8 MB of YAML.

Hashing (--hash-mb, default 1024; --hash-files, default 10,000): a workflow
whose one step reads a big file (or a directory of small files) is planned with
an empty stat cache, so dnaflow hashes every byte, and compared with `b3sum`
over the same file(s) in the same run (b3sum is `cargo install b3sum`; skipped
with a message when it is absent). Files are page-cached by a warm-up.

Targets printed with PASS/MISS (informational: the exit status is 0 unless
something crashed):
    no-op rerun of 1000 steps <= 50 ms
    no-op rerun of 1000 steps >= 50x faster than Snakemake
    plan of 10,000 steps <= 1 s
    plan and no-op rerun of 100,000 steps <= 2 s each, peak RSS <= 1 GiB,
    ms per step growing no faster than linearly (100,000 vs 10,000: <= 1.25x)
    hashing one big file and 10,000 small files <= 1.25x b3sum

The Snakemake side is written the idiomatic, fast way: one wildcard rule
`out/s{i}/x` with an input function returning the parents' files (plus a rule
for the source step s0), and a target rule listing every output.

How to run
----------
    cargo build --release                     # dnaflow binary
    python3 benches/engine_bench.py           # full run, a few minutes
    python3 benches/engine_bench.py --skip-snakemake --sizes 10,100 --repeat 3
    python3 benches/engine_bench.py --json bench.json

The dnaflow binary is $DNAFLOW_BIN, else target/release/dnaflow, else
target/debug/dnaflow (a debug build makes the timings meaningless). If
Snakemake is not importable and not on PATH it is pip-installed into the
Python running this script. Everything happens in a temporary directory that
is removed at the end (--keep-tmp keeps it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (description, steps, measure, limit_ms) for absolute-time targets.
NOOP_TARGET_STEPS = 1000
NOOP_TARGET_MS = 50.0
NOOP_TARGET_RATIO = 50.0
PLAN_TARGET_STEPS = 10_000
PLAN_TARGET_MS = 1000.0


class BenchError(Exception):
    """A command the benchmark depends on failed; reported without a traceback."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the DAG


def parents(i: int) -> list[int]:
    """Upstream steps of step i: i-1 and i//2, deduplicated (none for step 0)."""
    return [] if i == 0 else sorted({i - 1, i // 2})


def dnaflow_workflow(n: int) -> str:
    lines = [f"name: bench-{n}", "steps:"]
    for i in range(n):
        ps = parents(i)
        if ps:
            srcs = " ".join(f"${{{{ steps.s{p}.out }}}}/x" for p in ps)
            cmd = f"cat {srcs} | wc -c > ${{{{ out }}}}/x"
        else:
            cmd = "echo 0 > ${{ out }}/x"
        lines += [f"  s{i}:", f"    run: {cmd}"]
    return "\n".join(lines) + "\n"


def snakefile(n: int) -> str:
    return f'''\
N = {n}


def parents(wildcards):
    i = int(wildcards.i)
    return [f"out/s{{p}}/x" for p in sorted({{i - 1, i // 2}})]


rule all:
    input: expand("out/s{{i}}/x", i=range(N))


rule first:
    output: "out/s0/x"
    shell: "echo 0 > {{output}}"


rule step:
    input: parents
    output: "out/s{{i}}/x"
    wildcard_constraints: i=r"[1-9][0-9]*"
    shell: "cat {{input}} | wc -c > {{output}}"
'''


# ---------------------------------------------------------------- processes


def run_rss(cmd: list[str], cwd: Path, timeout: float | None = None) -> tuple[float, float]:
    """Run cmd; (wall seconds, the process's own peak RSS in MiB). Raises BenchError."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        child.returncode = 0
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        err = child.stderr.read().decode(errors="replace") if child.stderr else ""
        raise BenchError(f"command failed in {cwd}: {' '.join(cmd)}\n{err[-2000:]}")
    if timeout is not None and dt > timeout:
        raise BenchError(f"took {dt:.0f} s (over {timeout:.0f} s): {' '.join(cmd)}")
    return dt, usage.ru_maxrss / 1024


def timed_rss(cmd: list[str], cwd: Path, repeat: int, before=None) -> dict:
    """One warm-up, then `repeat` runs: median wall ms and the largest peak RSS in MiB."""
    if before:
        before()
    run_rss(cmd, cwd)
    walls, rss = [], []
    for _ in range(repeat):
        if before:
            before()
        w, r = run_rss(cmd, cwd)
        walls.append(w * 1000)
        rss.append(r)
    return {"median_ms": statistics.median(walls), "min_ms": min(walls),
            "samples_ms": [round(x, 3) for x in walls], "peak_rss_mib": max(rss),
            "cmd": " ".join(cmd)}


def run_cmd(cmd: list[str], cwd: Path, timeout: float | None = None) -> tuple[float, str]:
    """Run cmd, return (wall seconds, combined output); raise BenchError if it fails."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except OSError as e:
        raise BenchError(f"cannot run {cmd[0]}: {e}") from None
    dt = time.perf_counter() - t0
    out = p.stdout + p.stderr
    if p.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-25:])
        raise BenchError(f"command failed (exit {p.returncode}) in {cwd}:\n  "
                         f"{' '.join(cmd)}\n--- last output ---\n{tail}")
    return dt, out


def timed(cmd: list[str], cwd: Path, repeat: int, timeout: float | None = None,
          check=None) -> dict:
    """One warm-up run, then `repeat` timed runs; returns median and samples in ms."""
    _, out = run_cmd(cmd, cwd, timeout)
    if check:
        check(out)
    samples = [run_cmd(cmd, cwd, timeout)[0] * 1000 for _ in range(repeat)]
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": [round(s, 3) for s in samples], "cmd": " ".join(cmd),
            "sample_output": out[-2000:]}


# ---------------------------------------------------------------- tools


def find_dnaflow() -> Path:
    env = os.environ.get("DNAFLOW_BIN")
    if env:
        p = Path(env)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BenchError(f"DNAFLOW_BIN={env} is not an executable file")
        return p.resolve()
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "dnaflow"
        if p.is_file() and os.access(p, os.X_OK):
            if profile == "debug":
                log("warning: using a DEBUG build (target/debug/dnaflow); timings are not "
                    "representative. Run `cargo build --release` first.")
            return p
    raise BenchError("no dnaflow binary found: set DNAFLOW_BIN, or build one with "
                     f"`cargo build --release` (looked for {REPO}/target/release/dnaflow "
                     f"and {REPO}/target/debug/dnaflow)")


def find_snakemake() -> tuple[list[str], str]:
    """Command prefix and version; pip-installs snakemake if it is missing."""
    if importlib.util.find_spec("snakemake") is not None:
        cmd = [sys.executable, "-m", "snakemake"]
    elif shutil.which("snakemake"):
        cmd = [shutil.which("snakemake")]
    else:
        log("snakemake not found; installing it with pip into "
            f"{sys.executable} (quiet) ...")
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "snakemake"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError("pip install snakemake failed (use --skip-snakemake to run "
                             f"without it):\n{p.stdout}{p.stderr}")
        importlib.invalidate_caches()
        cmd = [sys.executable, "-m", "snakemake"]
    _, out = run_cmd(cmd + ["--version"], Path.cwd())
    return cmd, out.strip().splitlines()[-1]


def expect_nothing_to_do(tool_out: str) -> None:
    if "Nothing to be done" not in tool_out:
        log("warning: Snakemake did not report 'Nothing to be done'; it is not a no-op:\n"
            + tool_out[-1500:])


# ---------------------------------------------------------------- benchmark


def bench_dnaflow(binary: Path, n: int, root: Path, repeat: int, timeout: float,
                  measures=("noop", "plan"), cold_plan=False) -> tuple[dict, float]:
    d = root / f"dnaflow-{n}"
    d.mkdir()
    wf = d / "workflow.yaml"
    wf.write_text(dnaflow_workflow(n))
    cache = d / "cache"
    run = [str(binary), "run", str(wf), "--cache", str(cache), "-q"]
    plan = [str(binary), "plan", str(wf), "--cache", str(cache)]
    res = {}
    if cold_plan:
        (d / "empty-cache").mkdir()
        cold = [str(binary), "plan", str(wf), "--cache", str(d / "empty-cache")]
        res["plan-cold"] = timed(cold, d, repeat, timeout)
    log(f"  dnaflow: building {n} steps ...")
    build_s, _ = run_cmd(run, d, timeout)
    log(f"  dnaflow: built in {build_s:.2f} s")
    if "noop" in measures:
        res["noop"] = timed(run, d, repeat, timeout)
    if "plan" in measures:
        res["plan"] = timed(plan, d, repeat, timeout)
    return res, build_s


def bench_snakemake(smk: list[str], n: int, root: Path, repeat: int,
                    timeout: float | None) -> tuple[dict, float]:
    d = root / f"snakemake-{n}"
    d.mkdir()
    (d / "Snakefile").write_text(snakefile(n))
    cores = str(os.cpu_count() or 1)
    log(f"  snakemake: building {n} steps (--cores {cores}, not timed) ...")
    build_s, _ = run_cmd(smk + ["--cores", cores, "-q"], d, timeout)
    log(f"  snakemake: built in {build_s:.2f} s")
    if not (d / "out" / f"s{n - 1}" / "x").is_file():
        raise BenchError(f"snakemake build in {d} did not produce out/s{n - 1}/x")
    res = {
        "noop": timed(smk + ["--cores", "1", "-q"], d, repeat, timeout, expect_nothing_to_do),
        "plan": timed(smk + ["-n", "-q"], d, repeat, timeout, expect_nothing_to_do),
    }
    return res, build_s


def bench_snakemake_cold_plan(smk: list[str], n: int, root: Path, repeat: int,
                              timeout: float) -> dict | None:
    """Dry run of an unbuilt directory; None if one run exceeds the timeout."""
    d = root / f"snakemake-{n}-cold"
    d.mkdir()
    (d / "Snakefile").write_text(snakefile(n))
    try:
        return timed(smk + ["-n", "-q"], d, repeat, timeout)
    except subprocess.TimeoutExpired:
        log(f"  snakemake: dry run of {n} steps took over {timeout:.0f} s; skipped")
        return None


def bench_scale(binary: Path, sizes: list[int], root: Path, repeat: int,
                timeout: float) -> list[dict]:
    """No-op rerun and plan of big workflows: ms, ms per step, peak RSS."""
    rows = []
    for n in sizes:
        d = root / f"scale-{n}"
        d.mkdir()
        wf = d / "workflow.yaml"
        wf.write_text(dnaflow_workflow(n))
        cache = d / "cache"
        run = [str(binary), "run", str(wf), "--cache", str(cache), "-q", "--jobs", "2"]
        plan = [str(binary), "plan", str(wf), "--cache", str(cache)]
        log(f"[scale {n} steps: {wf.stat().st_size / 1e6:.1f} MB of YAML] building ...")
        build_s, _ = run_cmd(run, d, timeout)
        log(f"  built in {build_s:.1f} s")
        for measure, cmd in (("noop", run), ("plan", plan)):
            r = timed_rss(cmd, d, repeat)
            r["ms_per_step"] = r["median_ms"] / n
            rows.append({"steps": n, "measure": measure, "dnaflow": r})
        shutil.rmtree(d, ignore_errors=True)
    return rows


def hash_workflow(input_path: str) -> str:
    return ("name: hash-bench\nsteps:\n  read:\n"
            f"    inputs: [{input_path}]\n    run: echo done > ${{{{ out }}}}/x\n")


def bench_hashing(binary: Path, mb: int, files: int, root: Path, repeat: int) -> list[dict]:
    """Cold `plan` (empty stat cache: every byte hashed) against b3sum on the same files."""
    b3sum = shutil.which("b3sum") or str(Path.home() / ".cargo/bin/b3sum")
    if not os.access(b3sum, os.X_OK):
        log("b3sum not found (cargo install b3sum); hashing comparison skipped")
        return []
    d = root / "hash"
    d.mkdir()
    big = d / "big.bin"
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(mb):
            f.write(chunk[i % 97:] + chunk[:i % 97])
    small = d / "small"
    small.mkdir()
    for i in range(files):
        (small / f"f{i:05}.txt").write_bytes(os.urandom(200 + i % 1800))
    small_files = sorted(str(p) for p in small.iterdir())
    rows = []
    for label, target, b3_args in (
        (f"hash {mb} MiB file", "big.bin", [str(big)]),
        (f"hash {files} small files", "small", small_files),
    ):
        wf = d / f"{target}.yaml"
        wf.write_text(hash_workflow(target))
        cache = d / f"cache-{target}"
        stat = cache / "stat-cache.json"
        plan = [str(binary), "plan", str(wf), "--cache", str(cache)]
        ours = timed_rss(plan, d, repeat, before=lambda: stat.unlink(missing_ok=True))
        theirs = timed_rss([b3sum, *b3_args], d, repeat)
        rows.append({"steps": 1, "measure": label, "dnaflow": ours, "b3sum": theirs,
                     "ratio": ours["median_ms"] / theirs["median_ms"]})
    return rows


# ---------------------------------------------------------------- report


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000",
                    help="comma-separated step counts for the comparison (default 10,100,1000)")
    ap.add_argument("--plan-size", type=int, default=PLAN_TARGET_STEPS,
                    help="steps for the large dnaflow plan measurement; 0 skips it (default 10000)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed runs per measurement after one warm-up; the median is reported")
    ap.add_argument("--skip-snakemake", action="store_true", help="time dnaflow only")
    ap.add_argument("--snakemake-timeout", type=float, default=120.0,
                    help="seconds one Snakemake dry run of --plan-size steps may take before "
                         "it is skipped (default 120)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds any other single command may take (default 1800)")
    ap.add_argument("--scale-sizes", default="1000,10000,100000",
                    help="step counts for the dnaflow-only scale measurement; empty skips it")
    ap.add_argument("--hash-mb", type=int, default=1024,
                    help="size of the big file hashed against b3sum; 0 skips hashing")
    ap.add_argument("--hash-files", type=int, default=10_000,
                    help="number of small files hashed against b3sum")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the tail of each tool's output from the warm-up run")
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.repeat < 1 or any(n < 1 for n in sizes) or args.plan_size < 0:
        ap.error("--repeat and sizes must be >= 1, --plan-size >= 0")

    binary = find_dnaflow()
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    dnaflow_version = ver.stdout.strip() if ver.returncode == 0 else "?"
    smk, smk_version = (None, None) if args.skip_snakemake else find_snakemake()

    print(f"dnaflow:   {binary} ({dnaflow_version})")
    print(f"snakemake: {'skipped' if smk is None else smk_version + '  (' + ' '.join(smk) + ')'}")
    print(f"machine:   {platform.platform()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}; median of {args.repeat} runs after 1 warm-up")
    sys.stdout.flush()

    rows: list[dict] = []  # one per (steps, measure)
    builds: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="dnaflow-bench-"))
    try:
        for n in sizes:
            log(f"[{n} steps]")
            dres, builds[f"dnaflow-{n}"] = bench_dnaflow(binary, n, tmp, args.repeat, args.timeout)
            sres = {}
            if smk is not None:
                sres, builds[f"snakemake-{n}"] = bench_snakemake(smk, n, tmp, args.repeat,
                                                                 args.timeout)
            for m in ("noop", "plan"):
                rows.append({"steps": n, "measure": m, "dnaflow": dres[m], "snakemake": sres.get(m)})

        if args.plan_size:
            n = args.plan_size
            log(f"[{n} steps, plan only]")
            dres, builds[f"dnaflow-{n}"] = bench_dnaflow(
                binary, n, tmp, args.repeat, args.timeout, measures=("plan",), cold_plan=True)
            scold = None
            if smk is not None:
                scold = bench_snakemake_cold_plan(smk, n, tmp, args.repeat, args.snakemake_timeout)
            rows.append({"steps": n, "measure": "plan-cold", "dnaflow": dres["plan-cold"],
                         "snakemake": scold})
            rows.append({"steps": n, "measure": "plan", "dnaflow": dres["plan"],
                         "snakemake": None})
        scale_sizes = [int(x) for x in args.scale_sizes.split(",") if x.strip()]
        scale = bench_scale(binary, scale_sizes, tmp, args.repeat, args.timeout)
        hashing = (bench_hashing(binary, args.hash_mb, args.hash_files, tmp, args.repeat)
                   if args.hash_mb else [])
    finally:
        if args.keep_tmp:
            log(f"kept temporary directory {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- table
    for r in rows:
        d, s = r["dnaflow"]["median_ms"], (r["snakemake"] or {}).get("median_ms")
        r["ratio"] = s / d if s is not None and d > 0 else None
    print()
    print(f"{'steps':>6}  {'measure':<9}  {'dnaflow_ms':>10}  {'snakemake_ms':>12}  {'ratio':>6}")
    for r in rows:
        s = r["snakemake"]
        print(f"{r['steps']:>6}  {r['measure']:<9}  {fmt_ms(r['dnaflow']['median_ms']):>10}  "
              f"{fmt_ms(s and s['median_ms']):>12}  {fmt_ratio(r['ratio']):>6}")
    print("\nnoop = rerun with everything cached; plan = dry run of the built workflow; "
          "plan-cold = dry run with nothing built.")
    print("ratio = snakemake_ms / dnaflow_ms (higher is better for dnaflow).")
    if args.verbose:
        for r in rows:
            for tool in ("dnaflow", "snakemake"):
                if r[tool]:
                    tail = r[tool]["sample_output"].rstrip().splitlines()[-8:]
                    print(f"\n--- {tool} {r['measure']} {r['steps']} steps: {r[tool]['cmd']}")
                    print("\n".join(tail) if tail else "(no output)")

    if scale:
        print(f"\n{'steps':>7}  {'measure':<7}  {'ms':>9}  {'ms/step':>8}  {'peak_MiB':>8}")
        for r in scale:
            x = r["dnaflow"]
            print(f"{r['steps']:>7}  {r['measure']:<7}  {x['median_ms']:>9.1f}  "
                  f"{x['ms_per_step']:>8.4f}  {x['peak_rss_mib']:>8.1f}")
    if hashing:
        print(f"\n{'measure':<26}  {'dnaflow_ms':>10}  {'b3sum_ms':>9}  {'ratio':>6}")
        for r in hashing:
            print(f"{r['measure']:<26}  {r['dnaflow']['median_ms']:>10.1f}  "
                  f"{r['b3sum']['median_ms']:>9.1f}  {r['ratio']:>5.2f}x")
        print("ratio = dnaflow_ms / b3sum_ms (dnaflow includes reading the workflow and "
              "planning; lower is better, target <= 1.25x).")

    # ---- targets
    def row(steps, measure):
        return next((r for r in rows if r["steps"] == steps and r["measure"] == measure), None)

    targets = []
    noop = row(NOOP_TARGET_STEPS, "noop")
    plan = row(PLAN_TARGET_STEPS, "plan")
    targets.append((f"no-op rerun of {NOOP_TARGET_STEPS} steps <= {NOOP_TARGET_MS:.0f} ms",
                    noop and noop["dnaflow"]["median_ms"],
                    noop and noop["dnaflow"]["median_ms"] <= NOOP_TARGET_MS, "ms"))
    targets.append((f"no-op rerun of {NOOP_TARGET_STEPS} steps >= {NOOP_TARGET_RATIO:.0f}x "
                     "faster than Snakemake",
                    noop and noop["ratio"],
                    noop and noop["ratio"] is not None and noop["ratio"] >= NOOP_TARGET_RATIO, "x"))
    targets.append((f"plan of {PLAN_TARGET_STEPS} steps <= {PLAN_TARGET_MS / 1000:.0f} s",
                    plan and plan["dnaflow"]["median_ms"],
                    plan and plan["dnaflow"]["median_ms"] <= PLAN_TARGET_MS, "ms"))
    def scale_row(steps, measure):
        return next((r["dnaflow"] for r in scale
                     if r["steps"] == steps and r["measure"] == measure), None)

    for measure in ("plan", "noop"):
        big, mid = scale_row(100_000, measure), scale_row(10_000, measure)
        targets.append((f"{measure} of 100,000 steps <= 2 s", big and big["median_ms"],
                        big and big["median_ms"] <= 2000, "ms"))
        targets.append((f"{measure} of 100,000 steps peak RSS <= 1 GiB",
                        big and big["peak_rss_mib"], big and big["peak_rss_mib"] <= 1024, "MiB"))
        growth = big and mid and big["ms_per_step"] / mid["ms_per_step"]
        targets.append((f"{measure}: ms per step at 100,000 <= 1.25x that at 10,000", growth,
                        growth is not None and growth <= 1.25, "x"))
    for r in hashing:
        targets.append((f"{r['measure']} <= 1.25x b3sum", r["ratio"], r["ratio"] <= 1.25, "x"))

    print("\ntargets:")
    target_json = []
    for desc, value, ok, unit in targets:
        if value is None:
            status, shown = "N/A ", "not measured"
        else:
            status = "PASS" if ok else "MISS"
            shown = (f"{value:.2f}x" if unit == "x" and value < 10 else fmt_ratio(value)
                     if unit == "x" else f"{value:.1f} {unit}")
        print(f"  {status}  {desc}  ({shown})")
        target_json.append({"target": desc, "value": value, "unit": unit,
                            "status": status.strip()})

    if args.json:
        doc = {
            "meta": {"dnaflow_bin": str(binary), "dnaflow_version": dnaflow_version,
                     "snakemake": smk_version, "python": platform.python_version(),
                     "platform": platform.platform(), "cpus": os.cpu_count(),
                     "repeat": args.repeat, "warmup": 1,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "build_s": builds,
            "results": [{"steps": r["steps"], "measure": r["measure"], "ratio": r["ratio"],
                         **{tool: ({k: v for k, v in r[tool].items() if k != "sample_output"}
                                   if r[tool] else None) for tool in ("dnaflow", "snakemake")}}
                        for r in rows],
            "scale": scale,
            "hashing": hashing,
            "targets": target_json,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"engine_bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except subprocess.TimeoutExpired as e:
        print(f"engine_bench: error: timed out after {e.timeout:.0f} s: {' '.join(e.cmd)}",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
