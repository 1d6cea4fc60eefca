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

Targets printed with PASS/MISS (informational: the exit status is 0 unless
something crashed):
    no-op rerun of 1000 steps <= 50 ms
    no-op rerun of 1000 steps >= 50x faster than Snakemake
    plan of 10,000 steps <= 1 s

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
    print("\ntargets:")
    target_json = []
    for desc, value, ok, unit in targets:
        if value is None:
            status, shown = "N/A ", "not measured"
        else:
            status = "PASS" if ok else "MISS"
            shown = fmt_ratio(value) if unit == "x" else f"{value:.1f} ms"
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
