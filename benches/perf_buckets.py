"""Where a training run's CPU time goes, by kind: a `perf record` profile's samples grouped into
matrix products, dnaflow's fused kernels, flex's element-wise ops, page zeroing, … with their
share and CPU-milliseconds per step (both threads together).

    perf record -o perf.data -F 1999 -- target/release/dnaflow run bench.yaml -q --cpus 2 --in-process
    python3 benches/perf_buckets.py perf.data 1999 30     # data, sampling Hz, training steps

`bench.yaml` is the workflow `train_bench.py` writes for a preset; `--in-process` keeps the
training step in the profiled process. Prints a Markdown table (benches/README.md has them).
"""
import subprocess, sys, re, collections
data = sys.argv[1]
out = subprocess.run(["perf","report","-i",data,"--no-children","-n","--sort","symbol","--stdio"],capture_output=True,text=True).stdout
rules = [
 ("matrix products: gemm microkernels", r"gemm_f32::microkernel"),
 ("matrix products: gemm packing and dispatch", r"gemm_common|gemm_f32::gemm|gemm_basic"),
 ("attention kernel (scores, softmax, context)", r"cpu_attention"),
 ("exact GELU's erf (libm erff, per element)", r"erff|erfc2"),
 ("exp (libm expf)", r"__expf"),
 ("dnaflow's fused row kernels (layer norm, GELU, softmax, their gradients; rayon closures)", r"rayon::iter|ForEachConsumer|MapFolder|fold_with|NoopConsumer|FnMut<A> for &F"),
 ("burn-flex element-wise ops (binary/unary/scalar, macerator SIMD)", r"burn_flex::ops|macerator|StridedIter"),
 ("kernel page zeroing (first touch of fresh memory)", r"clear_page"),
 ("memset / memmove (zeroed outputs, copies)", r"__memset|__memmove|memcpy"),
 ("building vectors (from_iter: gathers, index lists)", r"from_iter|Map<I,F> as core::iter"),
 ("scheduling and the kernel (yield, locks, syscalls)", r"\[k\]|sched_yield|LocalKey|rayon_core"),
]
tot = collections.OrderedDict((n,0.0) for n,_ in rules); other=0.0
for line in out.splitlines():
    m = re.match(r"\s+([\d.]+)%\s+(\d+)\s+(\[.\])\s+(.*)", line)
    if not m: continue
    pct, kind, sym = int(m.group(2)), m.group(3), m.group(4).strip()
    full = kind+" "+sym
    for n,r in rules:
        if re.search(r, full):
            tot[n]+=pct; break
    else:
        other+=pct
hz=float(sys.argv[2]); steps=int(sys.argv[3]); total=sum(tot.values())+other
for n,v in sorted(tot.items(), key=lambda x:-x[1]):
    print(f"| {n} | {100*v/total:.1f} % | {1000*v/hz/steps:.0f} |")
print(f"| everything else | {100*other/total:.1f} % | {1000*other/hz/steps:.0f} |")
print(f"| total | | {1000*total/hz/steps:.0f} |")
