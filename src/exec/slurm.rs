//! `executor: slurm`: each step attempt is one Slurm job. The job runs what a local attempt
//! runs (`dnaflow step-exec JOB` for a built-in kind, the shell command for a `run:` step) on
//! a node that sees the cache through a shared filesystem; the scheduler here submits it with
//! `sbatch --parsable`, follows it with `squeue` (one call for every job, at most once per
//! poll interval), reads how it ended from `sacct -c` (the job completion log, which works
//! without accounting), and commits its outputs. A job pending on a request no node can meet
//! is cancelled and reported with Slurm's reason; Ctrl-C cancels every job with `scancel`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::shell::CANCELLED;
use crate::workflow::template::shell_quote as quote;

/// Cluster settings, from the `--cluster FILE` YAML: never in the code, never in a workflow.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `sbatch --partition`.
    pub partition: Option<String>,
    /// `sbatch --account`.
    pub account: Option<String>,
    /// `sbatch --qos`.
    pub qos: Option<String>,
    /// `sbatch --time`, the limit of every job (e.g. `2:00:00`).
    pub time: Option<String>,
    /// More `sbatch` flags, as written (e.g. `["--constraint=a100"]`).
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Seconds between two looks at the queue (default 1; at least 0.2).
    pub poll_seconds: Option<f64>,
}

impl SlurmSettings {
    /// Read a settings file, naming it in errors.
    pub fn read(path: &Path) -> Result<SlurmSettings, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| {
            format!(
                "{}: {e} (fields: partition, account, qos, time, sbatch, poll_seconds)",
                path.display()
            )
        })
    }

    fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds.unwrap_or(1.0).max(0.2))
    }
}

/// Pending reasons that no waiting will clear: the request exceeds what the partition or
/// its nodes can ever give, or names what the cluster does not know.
const IMPOSSIBLE: &[&str] = &[
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob",
    "QOSMaxGRESPerJob",
];

/// One job to submit.
pub struct JobSpec<'a> {
    /// Shown in `squeue` as `dnaflow:<name>`.
    pub name: &'a str,
    /// The body of the job's bash script.
    pub script: String,
    /// Where the script is written (the attempt's staging directory).
    pub dir: &'a Path,
    pub workdir: &'a Path,
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    /// CPUs, memory and GPUs of each node the job takes.
    pub cpus: u32,
    pub mem_mb: u64,
    pub gpus: u32,
    /// Nodes, and tasks (one per data-parallel rank) dealt evenly over them.
    pub nodes: u32,
    pub tasks: u32,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    pub id: String,
    /// `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, `OUT_OF_MEMORY`, `NODE_FAIL`, …
    pub state: String,
    /// The script's exit status, and the signal that ended it (0: none).
    pub code: i32,
    pub signal: i32,
}

/// The Slurm executor: settings and what it knows of the queue.
pub struct Slurm {
    settings: SlurmSettings,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// When `squeue` was last asked.
    looked: Option<Instant>,
    /// State and reason of each job of ours still in the queue, as last seen.
    seen: HashMap<String, (String, String)>,
    /// Jobs of ours not yet ended.
    active: Vec<String>,
}

impl Slurm {
    /// The executor, if `sbatch` can be run here.
    pub fn new(settings: SlurmSettings) -> Result<Slurm, String> {
        let ok = Command::new("sbatch")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(
                "`executor: slurm` needs Slurm's `sbatch` on this machine (run dnaflow on the \
                 cluster's login node), or run with `--executor local`"
                    .into(),
            );
        }
        Ok(Slurm {
            settings,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// The `sbatch` arguments of a job.
    fn sbatch_args(&self, job: &JobSpec, script: &Path) -> Vec<String> {
        let s = &self.settings;
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name=dnaflow:{}", job.name),
            format!("--chdir={}", job.workdir.display()),
            format!("--output={}", job.stdout.display()),
            format!("--error={}", job.stderr.display()),
            "--open-mode=append".into(),
        ];
        let (nodes, tasks) = (job.nodes.max(1), job.tasks.max(1));
        if tasks > 1 || nodes > 1 {
            let per_node = tasks.div_ceil(nodes);
            a.push(format!("--nodes={nodes}"));
            a.push(format!("--ntasks={tasks}"));
            a.push(format!("--ntasks-per-node={per_node}"));
            a.push(format!("--cpus-per-task={}", (job.cpus / per_node).max(1)));
        } else {
            a.push(format!("--cpus-per-task={}", job.cpus.max(1)));
            a.push("--ntasks=1".into());
        }
        if job.mem_mb > 0 {
            a.push(format!("--mem={}M", job.mem_mb));
        }
        if job.gpus > 0 {
            a.push(format!("--gres=gpu:{}", job.gpus));
        }
        for (flag, v) in [
            ("--partition", &s.partition),
            ("--account", &s.account),
            ("--qos", &s.qos),
            ("--time", &s.time),
        ] {
            if let Some(v) = v {
                a.push(format!("{flag}={v}"));
            }
        }
        a.extend(s.sbatch.iter().cloned());
        a.push(script.display().to_string());
        a
    }

    /// Submit a job and wait until it ends (or is cancelled: Ctrl-C, or a request the
    /// cluster can never meet).
    pub fn run(&self, job: &JobSpec) -> Result<JobEnd, String> {
        let script = job.dir.join("job.sh");
        std::fs::write(&script, format!("#!/bin/bash\n{}\n", job.script))
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let args = self.sbatch_args(job, &script);
        let out = Command::new("sbatch")
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run sbatch: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sbatch refused the job: {} (sbatch {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                args.join(" ")
            ));
        }
        let id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        tracing::info!(job = %id, step = %job.name, "submitted to Slurm");
        {
            // The next look at the queue must include the new job: a snapshot taken before
            // it was submitted would make it look gone.
            let mut q = self.queue.lock().expect("queue");
            q.active.push(id.clone());
            q.looked = None;
        }
        let result = self.wait(&id);
        let _ = std::fs::remove_file(&script);
        self.queue
            .lock()
            .expect("queue")
            .active
            .retain(|j| *j != id);
        result
    }

    fn wait(&self, id: &str) -> Result<JobEnd, String> {
        loop {
            if CANCELLED.load(Ordering::SeqCst) {
                scancel(id);
                let _ = self.ended(id);
                return Err(format!("interrupted: Slurm job {id} cancelled"));
            }
            match self.look(id) {
                Some((state, reason))
                    if state == "PENDING" && IMPOSSIBLE.contains(&reason.as_str()) =>
                {
                    scancel(id);
                    return Err(format!(
                        "Slurm can never start job {id}: it is pending with reason `{reason}` \
                         (the request exceeds what the partition's nodes have, or names an \
                         account or QOS the cluster does not know); lower the step's \
                         `resources` or change the cluster settings"
                    ));
                }
                Some((state, _)) if is_final(&state) => return self.ended(id),
                Some(_) => {}
                None => return self.ended(id),
            }
            std::thread::sleep(self.settings.poll().min(Duration::from_millis(250)));
        }
    }

    /// The job's state and reason, from a `squeue` shared by every waiting job and run at
    /// most once per poll interval; `None` once it has left the queue.
    fn look(&self, id: &str) -> Option<(String, String)> {
        let mut q = self.queue.lock().expect("queue");
        if q.looked.is_none_or(|t| t.elapsed() >= self.settings.poll()) {
            let ids = q.active.join(",");
            let out = Command::new("squeue")
                .args(["-h", "-t", "all", "-o", "%i|%T|%r", "-j", &ids])
                .output();
            q.looked = Some(Instant::now());
            if let Ok(o) = out {
                // A job purged from the queue makes squeue exit 1; the listed ones still count.
                q.seen = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split('|');
                        Some((
                            f.next()?.trim().to_string(),
                            (f.next()?.trim().to_string(), f.next()?.trim().to_string()),
                        ))
                    })
                    .collect();
            }
        }
        q.seen.get(id).cloned()
    }

    /// How a job that left the queue ended: `scontrol` while the controller still holds it
    /// (it is the authority), else the job completion log (`sacct -c`), whose newest line for
    /// the id counts (ids repeat when a cluster's state is reset).
    fn ended(&self, id: &str) -> Result<JobEnd, String> {
        for _ in 0..50 {
            if let Some(end) = scontrol(id).or_else(|| sacct(id)) {
                return Ok(end);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "Slurm job {id} left the queue but neither `sacct -c` nor `scontrol` says how it ended"
        ))
    }
}

fn is_final(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "RESIZING"
    )
}

/// `code:signal` as Slurm writes an exit code.
fn parse_exit(s: &str) -> (i32, i32) {
    let mut it = s.split(':');
    let code = it.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    let signal = it.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    (code, signal)
}

fn sacct(id: &str) -> Option<JobEnd> {
    let out = Command::new("sacct")
        .args(["-c", "-j", id, "-P", "-n", "-o", "jobid,state,exitcode"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The log appends: the newest record of a reused id is the last.
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.len() >= 3 && f[0].trim() == id && is_final(f[1].split_whitespace().next()?)).then(
            || {
                let (code, signal) = parse_exit(f[2]);
                JobEnd {
                    id: id.to_string(),
                    state: f[1]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    code,
                    signal,
                }
            },
        )
    })
}

fn scontrol(id: &str) -> Option<JobEnd> {
    let out = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let state = field("JobState")?;
    if !is_final(&state) {
        return None;
    }
    let (code, signal) = parse_exit(&field("ExitCode").unwrap_or_default());
    Some(JobEnd {
        id: id.to_string(),
        state,
        code,
        signal,
    })
}

/// Cancel a job (no error when it has already ended).
pub fn scancel(id: &str) {
    let _ = Command::new("scancel").arg(id).output();
}

/// `export` lines for a job's environment.
pub fn exports(env: &[(String, String)]) -> String {
    env.iter()
        .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES") // Slurm sets the job's own (--gres)
        .map(|(k, v)| format!("export {k}={}\n", quote(v)))
        .collect()
}

/// The script of a built-in step's job: `dnaflow step-exec JOB`.
/// With `ranks`, `srun` starts one task per rank; they meet at the job's first node on a
/// port drawn from the job id (as torchrun's `MASTER_PORT`), each learning its rank from
/// `SLURM_PROCID`.
pub fn step_exec_script(bin: &Path, job: &Path, env: &[(String, String)], ranks: bool) -> String {
    let launch = if ranks {
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\nexec srun "
    } else {
        "exec "
    };
    format!(
        "{}{launch}{} step-exec {}",
        exports(env),
        quote(&bin.display().to_string()),
        quote(&job.display().to_string())
    )
}

/// The script of a shell step's job: the command, under the same bash options as locally.
pub fn shell_script(command: &str, env: &[(String, String)]) -> String {
    format!("{}set -e -o pipefail\n{command}", exports(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_states_read_as_slurm_writes_them() {
        assert_eq!(parse_exit("3:0"), (3, 0));
        assert_eq!(parse_exit("0:9"), (0, 9));
        assert!(is_final("CANCELLED") && is_final("FAILED") && is_final("OUT_OF_MEMORY"));
        assert!(!is_final("PENDING") && !is_final("COMPLETING"));
    }

    #[test]
    fn sbatch_gets_the_resources_and_the_settings() {
        let slurm = Slurm {
            settings: SlurmSettings {
                partition: Some("gpu".into()),
                account: Some("lab".into()),
                qos: None,
                time: Some("1:00:00".into()),
                sbatch: vec!["--constraint=a100".into()],
                poll_seconds: None,
            },
            queue: Mutex::new(Queue::default()),
        };
        let job = JobSpec {
            name: "train",
            script: String::new(),
            dir: Path::new("/c/tmp/x"),
            workdir: Path::new("/w"),
            stdout: Path::new("/l/train.out"),
            stderr: Path::new("/l/train.err"),
            cpus: 4,
            mem_mb: 8192,
            gpus: 1,
            nodes: 1,
            tasks: 1,
        };
        let a = slurm.sbatch_args(&job, Path::new("/c/tmp/x/job.sh"));
        for want in [
            "--parsable",
            "--job-name=dnaflow:train",
            "--cpus-per-task=4",
            "--mem=8192M",
            "--gres=gpu:1",
            "--partition=gpu",
            "--account=lab",
            "--time=1:00:00",
            "--constraint=a100",
            "--output=/l/train.out",
        ] {
            assert!(a.contains(&want.to_string()), "{want} in {a:?}");
        }
        assert_eq!(a.last().unwrap(), "/c/tmp/x/job.sh");
        assert!(a.contains(&"--ntasks=1".to_string()), "{a:?}");

        // Eight ranks over two nodes of 4 GPUs and 32 CPUs: 4 tasks per node, 8 CPUs each.
        let ranks = JobSpec {
            cpus: 32,
            gpus: 4,
            nodes: 2,
            tasks: 8,
            ..job
        };
        let a = slurm.sbatch_args(&ranks, Path::new("/c/tmp/x/job.sh"));
        for want in [
            "--nodes=2",
            "--ntasks=8",
            "--ntasks-per-node=4",
            "--cpus-per-task=8",
            "--gres=gpu:4",
        ] {
            assert!(a.contains(&want.to_string()), "{want} in {a:?}");
        }
        let script = step_exec_script(Path::new("/bin/dnaflow"), Path::new("/j.json"), &[], true);
        assert!(
            script.contains("exec srun /bin/dnaflow step-exec /j.json"),
            "{script}"
        );
        assert!(script.contains("MASTER_PORT="), "{script}");
    }
}
