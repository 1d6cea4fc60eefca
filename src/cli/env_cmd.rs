//! `dnaflow env`: what a beginner needs to know before training (tutorial 1.1).

use std::path::Path;

use super::Failure;
use crate::cache::dir_size;
use crate::exec::detect_capacity;
use crate::steps;

/// Everything `env` reports, also as JSON.
#[derive(Debug, serde::Serialize)]
pub struct EnvReport {
    pub dnaflow: String,
    pub backends: Vec<String>,
    pub cpu_threads: usize,
    pub memory_mib: u64,
    pub gpus: Vec<String>,
    pub cache_dir: String,
    pub cache_bytes: u64,
    pub hf_cache_dir: String,
    pub hf_offline: bool,
    pub step_kinds: Vec<String>,
    pub versions: Vec<(String, String)>,
}

/// GPUs as the NVIDIA driver lists them (name and memory), via `nvidia-smi` when present.
fn gpus() -> Vec<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect(),
        _ => {
            let (_, n, _) = detect_capacity();
            (0..n)
                .map(|i| format!("{i}, NVIDIA GPU (nvidia-smi not found)"))
                .collect()
        }
    }
}

pub fn report(cache: &Path) -> EnvReport {
    let (cpus, _, mem) = detect_capacity();
    EnvReport {
        dnaflow: env!("CARGO_PKG_VERSION").into(),
        backends: crate::models::device::compiled_backends(),
        cpu_threads: cpus,
        memory_mib: mem,
        gpus: gpus(),
        cache_dir: std::path::absolute(cache)
            .unwrap_or(cache.to_path_buf())
            .display()
            .to_string(),
        cache_bytes: dir_size(cache),
        hf_cache_dir: steps::fetch::hf_cache_dir().display().to_string(),
        hf_offline: steps::fetch::hf_offline(),
        step_kinds: steps::KINDS.iter().map(|k| k.name.to_string()).collect(),
        versions: vec![
            ("tokenizers".into(), "0.22.2".into()),
            ("polars".into(), "0.55".into()),
            ("hf-hub".into(), "0.4".into()),
        ],
    }
}

pub fn env(cache: &Path, json: bool) -> Result<(), Failure> {
    let r = report(cache);
    if json {
        println!("{}", serde_json::to_string_pretty(&r).expect("json"));
        return Ok(());
    }
    println!("dnaflow {}", r.dnaflow);
    println!("compute backends   {}", r.backends.join(", "));
    println!(
        "CPU threads        {} (steps get their share through `resources: {{cpus: N}}`)",
        r.cpu_threads
    );
    println!("memory             {:.1} GiB", r.memory_mib as f64 / 1024.0);
    if r.gpus.is_empty() {
        println!("GPUs               none found (training runs on the CPU)");
    } else {
        println!("GPUs               {}", r.gpus.join("; "));
    }
    println!(
        "cache              {} ({:.1} MiB)",
        r.cache_dir,
        r.cache_bytes as f64 / 1048576.0
    );
    println!(
        "Hugging Face cache {}{}",
        r.hf_cache_dir,
        if r.hf_offline {
            " (HF_HUB_OFFLINE: no downloads)"
        } else {
            ""
        }
    );
    println!("step kinds         {}", r.step_kinds.join(", "));
    let v: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("libraries          {}", v.join(", "));
    Ok(())
}
