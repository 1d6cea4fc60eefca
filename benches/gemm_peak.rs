//! The machine's fp32 matrix-product peak, measured with the `gemm` crate burn-flex and our
//! attention kernel use (same version, same features), so the training benchmark can say how
//! far a model's FLOP/s is from what this CPU does at its best.
//!
//!     cargo bench --bench gemm_peak -- [--sizes 1024,2048] [--threads 1,2] [--json]
//!
//! For each thread count it times C = A·B for square f32 matrices, best of a few repeats after
//! one warm-up, and prints GFLOP/s (2·n³ per product). `benches/train_bench.py` runs it and
//! takes the largest figure per thread count as the peak.

use std::time::Instant;

fn product(n: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let parallelism = if threads <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: a, b and c each hold n×n f32, row-major (column stride 1, row stride n).
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Best GFLOP/s of `repeats` timed products of size n (after one untimed warm-up).
fn measure(n: usize, threads: usize, repeats: usize) -> f64 {
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut c = vec![0f32; n * n];
    product(n, &a, &b, &mut c, threads);
    let flops = 2.0 * (n as f64).powi(3);
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            product(n, &a, &b, &mut c, threads);
            flops / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn list(value: Option<String>, default: &[usize]) -> Vec<usize> {
    match value {
        None => default.to_vec(),
        Some(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
            })
            .collect(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut sizes, mut threads, mut json) = (None, None, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => sizes = args.next(),
            "--threads" => threads = args.next(),
            "--json" => json = true,
            "--bench" => {} // cargo bench passes it to harness-less benches
            other => panic!("unknown argument {other:?}; see the file's header"),
        }
    }
    let sizes = list(sizes, &[1024, 2048]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = list(threads, &[1, cores]);
    let mut rows = Vec::new();
    for &t in &threads {
        for &n in &sizes {
            let repeats = if n <= 1024 { 8 } else { 3 };
            let gflops = measure(n, t, repeats);
            if !json {
                println!("gemm f32 {n}x{n}x{n}, {t} thread(s): {gflops:.1} GFLOP/s");
            }
            rows.push(format!(
                "{{\"n\": {n}, \"threads\": {t}, \"gflops\": {gflops:.3}}}"
            ));
        }
    }
    if json {
        println!("[{}]", rows.join(", "));
    }
}
