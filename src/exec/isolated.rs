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

/// How `step-exec` ended, as an attempt's result; the job's files are removed (nothing of
/// the attempt stays beside the outputs that get committed).
pub fn outcome(
    job: &Job,
    job_path: &Path,
    code: Option<i32>,
    signal: Option<i32>,
) -> Result<(), AttemptError> {
    let written = std::fs::read_to_string(&job.error)
        .ok()
        .filter(|m| !m.trim().is_empty());
    for f in [job_path, &job.error, &job.status] {
        let _ = std::fs::remove_file(f);
    }
    Err(match (code, signal) {
        (Some(0), _) => return Ok(()),
        (Some(EXIT_INPUT), _) | (Some(EXIT_INTERNAL), _) => {
            AttemptError::Input(written.unwrap_or_else(|| "the step failed (no message)".into()))
        }
        (Some(code), _) => AttemptError::Transient(format!(
            "the step's process exited with status {code}{}",
            written.map_or(String::new(), |m| format!(": {m}"))
        )),
        (None, Some(sig)) if CANCELLED.load(Ordering::SeqCst) => {
            AttemptError::Transient(format!("interrupted (signal {sig})"))
        }
        (None, Some(sig)) => AttemptError::Transient(format!(
            "the step's process was killed by signal {sig} ({}); the run went on without it",
            signal_name(sig)
        )),
        _ => AttemptError::Transient("the step's process failed".into()),
    })
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
    let mut cmd = Command::new(bin);
    cmd.arg("step-exec")
        .arg(&job_path)
        .current_dir(&job.workdir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .env_remove("DNAFLOW_CACHE")
        .envs(env.iter().map(|(k, v)| (k, v)));
    // The child's status lines reach the progress display; the watcher ends the moment the
    // child does (its channel closes), so a short step waits for nothing.
    let (finished, until) = std::sync::mpsc::channel::<()>();
    let status = std::thread::scope(|scope| {
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
        let status = run_in_group(&mut cmd);
        drop(finished);
        status
    });
    let status = status
        .map_err(|e| AttemptError::Transient(format!("cannot start `{}`: {e}", bin.display())))?;
    use std::os::unix::process::ExitStatusExt;
    outcome(job, &job_path, status.code(), status.signal())
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
    run: impl FnOnce(&Job, &(dyn Fn(&str) + Sync)) -> Result<(), String>,
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
    let last = std::sync::Mutex::new(Instant::now() - Duration::from_secs(1));
    let status = |msg: &str| {
        if let Ok(mut t) = last.lock()
            && t.elapsed() >= Duration::from_millis(200)
        {
            *t = Instant::now();
            let _ = std::fs::write(&job.status, msg);
        }
    };
    match run(&job, &status) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = std::fs::write(&job.error, &message);
            let internal = message.starts_with("internal error in");
            ExitCode::from(if internal { EXIT_INTERNAL } else { EXIT_INPUT } as u8)
        }
    }
}
