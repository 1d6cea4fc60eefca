//! `dnaflow model DIR`: what a model directory holds (architecture, head, labels, size,
//! checkpoint files and their dtypes) and, with `--load`, that it builds: every tensor found
//! and shaped, with the load time and the process's peak memory against the files' size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::models::checkpoint;
use crate::models::{Model, ModelSpec};

/// Arguments of `dnaflow model`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A model directory (config.json and model.safetensors, shards, or pytorch_model.bin).
    dir: PathBuf,
    /// Build the model on the CPU: checks every tensor, reports load time and peak memory.
    #[arg(long)]
    load: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn model(a: &ModelArgs) -> anyhow::Result<()> {
    let spec = ModelSpec::read(&a.dir)?;
    let files = checkpoint::checkpoint_files(&a.dir)?;
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let tensors = checkpoint::read_dir(&a.dir)?;
    let mut dtypes = std::collections::BTreeMap::<String, usize>::new();
    let mut stored = 0usize;
    for t in &tensors {
        let n: usize = t.shape.iter().product();
        *dtypes.entry(format!("{:?}", t.dtype)).or_default() += n;
        stored += n;
    }
    drop(tensors);
    let config = &spec.config;
    let mut out = json!({
        "directory": a.dir.display().to_string(),
        "architecture": config.name(),
        "class": spec.class(),
        "task": spec.task.name(),
        "layers": config.num_layers(),
        "hidden_size": config.hidden_size(),
        "vocab_size": config.vocab_size(),
        "max_positions": config.max_positions(),
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "file_bytes": bytes,
        "stored_values": stored,
        "stored_dtypes": dtypes,
    });
    if a.load {
        let start = Instant::now();
        let (model, report) =
            Model::<burn::backend::Flex>::load(&a.dir, None, 0, &Default::default())
                .with_context(|| format!("building {}", a.dir.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        let params = burn::module::Module::num_params(&model);
        let peak = peak_rss_bytes();
        out["load"] = json!({
            "parameters": params,
            "seconds": seconds,
            "skipped": report.skipped,
            "fresh": report.fresh,
            "peak_rss_bytes": peak,
            "peak_rss_over_file_bytes": peak.map(|p| p as f64 / bytes.max(1) as f64),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} ({}, task {}): {} layers, hidden {}, vocab {}, {} positions",
        a.dir.display(),
        out["class"].as_str().unwrap_or(""),
        out["task"].as_str().unwrap_or(""),
        out["layers"],
        out["hidden_size"],
        out["vocab_size"],
        out["max_positions"]
    );
    println!(
        "  {} checkpoint file(s), {:.1} MiB, {} stored values ({})",
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        stored,
        out["stored_dtypes"]
    );
    if let Some(load) = out.get("load") {
        println!(
            "  built on the CPU in {:.2} s: {} parameters; peak memory {} ({:.2}× the files)",
            load["seconds"].as_f64().unwrap_or(0.0),
            load["parameters"],
            load["peak_rss_bytes"]
                .as_u64()
                .map_or("unknown".into(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / (1 << 20) as f64
                )),
            load["peak_rss_over_file_bytes"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
        for (what, key) in [
            ("skipped (another head)", "skipped"),
            ("initialised fresh", "fresh"),
        ] {
            if let Some(names) = load[key].as_array()
                && !names.is_empty()
            {
                println!("  {what}: {}", names.len());
            }
        }
    }
    Ok(())
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
