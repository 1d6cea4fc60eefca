//! Built-in steps in their own process: the scheduler writes a job file (the kind, its
//! interpolated parameters, the staging directory, the threads and GPUs it granted) and starts
//! `dnaflow step-exec JOB`, which runs exactly the code an in-process run would. A panic, an
//! abort, an out-of-memory kill or a GPU fault ends that process only: the step fails, with
//! how it died in the run record, and the run goes on (`--keep-going`). The same command is
//! what another executor (a cluster job) would start.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shell::{CANCELLED, run_in_group};

/// Exit status of `step-exec` when the step failed on its input (a retry would fail again).
pub const EXIT_INPUT: i32 = 3;
/// Exit status of `step-exec` when the step hit a bug in dnaflow (a panic).
pub const EXIT_INTERNAL: i32 = 70;

/// Everything `step-exec` needs to run one attempt of a built-in step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The kind's name (`uses:`).
    pub kind: String,
    /// Its parameters, interpolated: upstream outputs and files as absolute paths.
    pub with: Value,
    /// The staging directory its outputs go to.
    pub out: PathBuf,
    pub workdir: PathBuf,
    /// CPU threads granted.
    pub threads: usize,
    /// Checkpoints that outlive failed attempts of this step.
    pub checkpoints: PathBuf,
    /// `--device` of the run, overriding the step's.
    pub device: Option<String>,
    /// Where the child writes its error message when it fails.
    pub error: PathBuf,
    /// Where the child writes its latest status line (for the progress display).
    pub status: PathBuf,
    /// Processes this attempt runs as, one per data-parallel rank (1: one process). Each
    /// learns its rank from the environment (torchrun's or Slurm's variables).
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

impl Job {
    /// The job as rank `rank` runs it: rank 0 writes the step's outputs; every other rank
    /// gets a scratch directory of its own beside them (removed when it ends) and its own
    /// error and status files.
    pub fn for_rank(&self, rank: usize) -> Job {
        if rank == 0 {
            return self.clone();
        }
        Job {
            out: self.out.with_file_name(format!("rank-{rank}")),
            error: self
                .error
                .with_file_name(format!("step-error.rank-{rank}.txt")),
            status: self
                .status
                .with_file_name(format!("step-status.rank-{rank}.txt")),
            ..self.clone()
        }
    }
}

/// How an attempt failed, typed for the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// The step failed on its input or hit a bug: the same attempt would fail the same way.
    Input(String),
    /// Killed, preempted, out of memory, or a command that may be flaky: worth a retry.
    Transient(String),
}

impl AttemptError {
    /// The message for the run record.
    pub fn message(&self) -> &str {
        match self {
            AttemptError::Input(m) | AttemptError::Transient(m) => m,
        }
    }
}

/// Write the job file beside the staging directory; its path.
pub fn write_job(job: &Job) -> Result<PathBuf, AttemptError> {
    let dir = job.error.parent().unwrap_or(Path::new("."));
    let job_path = dir.join("job.json");
    let bytes =
        serde_json::to_vec_pretty(job).map_err(|e| AttemptError::Transient(e.to_string()))?;
    std::fs::write(&job_path, bytes)
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", job_path.display())))?;
    Ok(job_path)
}

/// How a child process ended: its exit code, or the signal that killed it (None: unknown).
pub type ProcessEnd = (Option<i32>, Option<i32>);

/// How the `step-exec` processes of an attempt ended, as its result (`ends[r]`: rank r's; one
/// end for a step that is one process; an end unknown on both counts, as a Slurm task's, is
/// told by the error it wrote, if any). Success when every process succeeded; else every
/// failed one's message, a retry worth it when one was killed, interrupted or exited oddly,
/// not when all failed on their input. The job's files, and other ranks' scratch
/// directories, are removed (nothing of the attempt stays beside the outputs committed).
pub fn outcome(job: &Job, job_path: &Path, ends: &[ProcessEnd]) -> Result<(), AttemptError> {
    let mut messages = Vec::new();
    let mut transient = false;
    for (rank, &(code, signal)) in ends.iter().enumerate() {
        let mine = job.for_rank(rank);
        let written = std::fs::read_to_string(&mine.error)
            .ok()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty());
        for f in [&mine.error, &mine.status] {
            let _ = std::fs::remove_file(f);
        }
        if rank > 0 {
            let _ = std::fs::remove_dir_all(&mine.out);
        }
        let (why, input) = match (code, signal) {
            (Some(0), _) => continue,
            (Some(EXIT_INPUT | EXIT_INTERNAL), _) => (
                written.unwrap_or_else(|| "the step failed (no message)".into()),
                true,
            ),
            (Some(c), _) => (
                format!(
                    "exited with status {c}{}",
                    written.map_or(String::new(), |m| format!(": {m}"))
                ),
                false,
            ),
            (None, Some(sig)) if CANCELLED.load(Ordering::SeqCst) => {
                (format!("interrupted (signal {sig})"), false)
            }
            (None, Some(sig)) => (
                format!("killed by signal {sig} ({})", signal_name(sig)),
                false,
            ),
            (None, None) => match written {
                Some(m) => (m, true),
                None => continue,
            },
        };
        transient |= !input;
        messages.push(match (ends.len(), input) {
            // One process: its own message as the kind wrote it.
            (1, true) => why,
            (1, false) => format!("the step's process: {why}"),
            _ => format!("rank {rank}: {why}"),
        });
    }
    let _ = std::fs::remove_file(job_path);
    if messages.is_empty() {
        return Ok(());
    }
    let message = messages.join("; ");
    Err(if transient {
        AttemptError::Transient(message)
    } else {
        AttemptError::Input(message)
    })
}

/// Run one attempt as `job.ranks` processes on this machine, as torchrun would: each gets
/// `RANK`, `LOCAL_RANK`, `WORLD_SIZE` and rank 0's loopback address and a free port, and the
/// GPUs granted (rank r takes the r-th). Output of every rank goes to the step's logs.
pub fn launch_ranks(
    bin: &Path,
    job: &Job,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    on_status: &(dyn Fn(&str) + Sync),
) -> Result<(), AttemptError> {
    let job_path = write_job(job)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| AttemptError::Transient(format!("no free port on loopback: {e}")))?;
    let mut cmds = Vec::new();
    for rank in 0..job.ranks {
        let logs = stdout
            .try_clone()
            .and_then(|o| Ok((o, stderr.try_clone()?)));
        let (out, err) = logs.map_err(|e| AttemptError::Transient(e.to_string()))?;
        let mut cmd = step_exec(bin, job, &job_path, env, out, err);
        cmd.env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", job.ranks.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        cmds.push(cmd);
    }
    let ends = run_children(bin, job, cmds, on_status)?;
    outcome(job, &job_path, &ends)
}

/// Run one attempt in a child process; `on_status` sees the step's status lines as they come.
pub fn launch(
    bin: &Path,
    job: &Job,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    on_status: &(dyn Fn(&str) + Sync),
) -> Result<(), AttemptError> {
    let job_path = write_job(job)?;
    let cmd = step_exec(bin, job, &job_path, env, stdout, stderr);
    let ends = run_children(bin, job, vec![cmd], on_status)?;
    outcome(job, &job_path, &ends)
}

/// `bin step-exec JOB` in the workflow's directory, its output into the step's logs.
fn step_exec(
    bin: &Path,
    job: &Job,
    job_path: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("step-exec")
        .arg(job_path)
        .current_dir(&job.workdir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .env_remove("DNAFLOW_CACHE")
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Run the children until every one has ended: each child's exit code and signal. Rank 0's
/// status lines reach the progress display; the watcher ends the moment the children do (its
/// channel closes), so a short step waits for nothing.
fn run_children(
    bin: &Path,
    job: &Job,
    mut cmds: Vec<Command>,
    on_status: &(dyn Fn(&str) + Sync),
) -> Result<Vec<ProcessEnd>, AttemptError> {
    let (finished, until) = std::sync::mpsc::channel::<()>();
    let ends = std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut last = String::new();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                until.recv_timeout(Duration::from_millis(250))
            {
                if let Ok(s) = std::fs::read_to_string(&job.status)
                    && s != last
                {
                    on_status(&s);
                    last = s;
                }
            }
        });
        let waiting: Vec<_> = cmds
            .iter_mut()
            .map(|cmd| scope.spawn(move || run_in_group(cmd)))
            .collect();
        let ends: Vec<_> = waiting
            .into_iter()
            .map(|w| w.join().expect("child waiter"))
            .collect();
        drop(finished);
        ends
    });
    use std::os::unix::process::ExitStatusExt;
    ends.into_iter()
        .map(|end| {
            end.map(|status| (status.code(), status.signal()))
                .map_err(|e| {
                    AttemptError::Transient(format!("cannot start `{}`: {e}", bin.display()))
                })
        })
        .collect()
}

/// What a signal usually means for a step.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL: out of memory, or killed from outside",
        libc::SIGSEGV => "SIGSEGV: a crash in native code",
        libc::SIGABRT => "SIGABRT: aborted",
        libc::SIGBUS => "SIGBUS: a bad memory access",
        libc::SIGTERM => "SIGTERM: stopped from outside",
        _ => "a signal",
    }
}

/// The child's side: run the job with `run` (the in-process runner), report how it ended.
pub fn child_main(
    job_path: &Path,
    run: impl FnOnce(
        &Job,
        Option<&crate::train::tcp::Rendezvous>,
        &(dyn Fn(&str) + Sync),
    ) -> Result<(), String>,
) -> ExitCode {
    super::shell::install_interrupt_handler();
    let job: Job = match std::fs::read(job_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{}: {e}", job_path.display());
            return ExitCode::from(EXIT_INTERNAL as u8);
        }
    };
    // One of several rank processes: rank 0 runs the job as written, the others in their own
    // scratch directory (they stop after training; rank 0 writes the outputs).
    let rendezvous = if job.ranks > 1 {
        match crate::train::tcp::Rendezvous::from_env(|k| std::env::var(k).ok()) {
            Ok(Some(rdv)) if rdv.ranks == job.ranks => Some(rdv),
            found => {
                let why = match found {
                    Err(e) => e,
                    Ok(Some(rdv)) => format!("{} ranks were started", rdv.ranks),
                    Ok(None) => "none was started (no RANK/WORLD_SIZE or SLURM_PROCID/\
                                 SLURM_NTASKS in the environment)"
                        .into(),
                };
                let message = format!("the step runs as {} rank processes, but {why}", job.ranks);
                eprintln!("{message}");
                let _ = std::fs::write(&job.error, &message);
                return ExitCode::from(EXIT_INPUT as u8);
            }
        }
    } else {
        None
    };
    let job = match &rendezvous {
        Some(rdv) => job.for_rank(rdv.rank),
        None => job,
    };
    if rendezvous.as_ref().is_some_and(|r| r.rank > 0)
        && let Err(e) = std::fs::create_dir_all(&job.out)
    {
        let message = format!("{}: {e}", job.out.display());
        let _ = std::fs::write(&job.error, &message);
        return ExitCode::from(EXIT_INPUT as u8);
    }
    let last = std::sync::Mutex::new(Instant::now() - Duration::from_secs(1));
    let status = |msg: &str| {
        if let Ok(mut t) = last.lock()
            && t.elapsed() >= Duration::from_millis(200)
        {
            *t = Instant::now();
            let _ = std::fs::write(&job.status, msg);
        }
    };
    let result = run(&job, rendezvous.as_ref(), &status);
    if rendezvous.as_ref().is_some_and(|r| r.rank > 0) {
        let _ = std::fs::remove_dir_all(&job.out);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = std::fs::write(&job.error, &message);
            let internal = message.starts_with("internal error in");
            ExitCode::from(if internal { EXIT_INTERNAL } else { EXIT_INPUT } as u8)
        }
    }
}
