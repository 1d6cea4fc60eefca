//! `cache ls | gc | verify | pin | unpin`.

use std::path::Path;

use anyhow::{Context, anyhow};

use super::Failure;
use crate::cache::{Cache, GcOptions};

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached objects: key, step, size, last use, pinned.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove objects no kept run uses, then enforce size/age limits. Keeps pinned objects and
    /// those of each workflow's latest run.
    Gc {
        /// Largest total size to keep, e.g. 20G.
        #[arg(long)]
        max_size: Option<String>,
        /// Remove objects unused for longer than this, e.g. 30d, 12h.
        #[arg(long)]
        max_age: Option<humantime::Duration>,
        /// Run records kept per workflow.
        #[arg(long, default_value_t = 20)]
        keep_runs: usize,
    },
    /// Check every object against its manifest (exit 1 when any is damaged).
    Verify {
        /// Remove damaged objects so the next run recomputes them.
        #[arg(long)]
        fix: bool,
    },
    /// Keep objects through `gc` (key or unique key prefix).
    Pin { keys: Vec<String> },
    /// Let `gc` remove objects again.
    Unpin { keys: Vec<String> },
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn cache(dir: &Path, cmd: &CacheCommand) -> Result<(), Failure> {
    let cache =
        Cache::open(dir).with_context(|| format!("cannot open the cache at {}", dir.display()))?;
    match cmd {
        CacheCommand::Ls { json } => {
            let list = cache.list();
            if *json {
                println!("{}", serde_json::to_string_pretty(&list).expect("json"));
                return Ok(());
            }
            let total: u64 = list.iter().map(|o| o.size).sum();
            println!(
                "{} objects, {} in {}",
                list.len(),
                human(total),
                cache.root.display()
            );
            for o in &list {
                println!(
                    "  {}  {:<10} {:>10}  {:<24} {}/{}{}",
                    &o.key[..12],
                    o.manifest.recipe.kind,
                    human(o.size),
                    o.last_used,
                    o.manifest.workflow,
                    o.manifest.step,
                    if o.pinned { "  [pinned]" } else { "" }
                );
            }
        }
        CacheCommand::Gc {
            max_size,
            max_age,
            keep_runs,
        } => {
            let max_size = match max_size {
                Some(s) => Some(
                    crate::workflow::parse_mem_mb(s)
                        .ok_or_else(|| anyhow!("--max-size {s}: expected a size like 20G"))?
                        * 1024
                        * 1024,
                ),
                None => None,
            };
            let lock = match cache.lock_exclusive(false)? {
                Some(l) => l,
                None => {
                    eprintln!("waiting for running dnaflow runs on this cache to finish…");
                    cache.lock_exclusive(true)?.expect("blocking lock")
                }
            };
            let report = cache.gc(&GcOptions {
                max_size,
                max_age: max_age.map(Into::into),
                keep_runs: *keep_runs,
            })?;
            drop(lock);
            println!(
                "removed {} objects, {} run records, {} staging dirs; freed {}, {} kept",
                report.objects_removed,
                report.runs_removed,
                report.staging_removed,
                human(report.bytes_freed),
                human(report.bytes_kept)
            );
        }
        CacheCommand::Verify { fix } => {
            let report = cache.verify();
            for (key, problem) in &report.problems {
                println!("DAMAGED {key}: {problem}");
            }
            if report.staging > 0 {
                println!(
                    "{} staging dirs from interrupted runs (harmless; `dnaflow cache gc` removes them)",
                    report.staging
                );
            }
            let damaged: std::collections::BTreeSet<&String> =
                report.problems.iter().map(|(k, _)| k).collect();
            println!(
                "verified {} objects: {} damaged",
                report.checked,
                damaged.len()
            );
            if *fix {
                for key in &damaged {
                    cache.remove(key)?;
                    println!("removed {key}");
                }
            }
            if !damaged.is_empty() && !fix {
                return Err(Failure::Exit(1));
            }
        }
        CacheCommand::Pin { keys } | CacheCommand::Unpin { keys } => {
            let pin = matches!(cmd, CacheCommand::Pin { .. });
            for k in keys {
                let key = cache.resolve_key(k)?;
                cache.pin(&key, pin)?;
                println!("{} {key}", if pin { "pinned" } else { "unpinned" });
            }
        }
    }
    Ok(())
}

impl From<crate::cache::CacheError> for Failure {
    fn from(e: crate::cache::CacheError) -> Failure {
        Failure::Other(e.into())
    }
}
