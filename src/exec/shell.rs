//! Shell steps: `bash -e -o pipefail -c COMMAND` in its own process group, killable on Ctrl-C.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the user interrupts the run.
pub static CANCELLED: AtomicBool = AtomicBool::new(false);
/// Process groups of running shell steps.
static CHILDREN: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// First Ctrl-C (or SIGTERM): stop launching, terminate running steps, record what happened.
/// Second: exit at once (the cache stays consistent: unfinished work lives only in staging).
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if CANCELLED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping running steps (press Ctrl-C again to quit at once)");
        if let Ok(guard) = CHILDREN.lock()
            && let Some(set) = guard.as_ref()
        {
            for &pgid in set {
                // SAFETY: plain syscall on a process group we created.
                unsafe {
                    libc::kill(-pgid, libc::SIGTERM);
                }
            }
        }
    });
}

/// Start `cmd` in its own process group (Ctrl-C reaches it through [`CANCELLED`]'s handler,
/// and it dies with dnaflow, `kill -9` included) and wait for it.
pub(crate) fn run_in_group(cmd: &mut Command) -> std::io::Result<std::process::ExitStatus> {
    cmd.process_group(0);
    let thp_back = crate::pages::switched_off();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Die with dnaflow (kill -9 included), so no step outlives the run that owns it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            crate::pages::restore_in_child(thp_back);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    if let Ok(mut g) = CHILDREN.lock() {
        g.get_or_insert_with(HashSet::new).insert(pid);
    }
    if CANCELLED.load(Ordering::SeqCst) {
        // SAFETY: plain syscall on the process group we just created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
    let status = child.wait();
    if let Ok(mut g) = CHILDREN.lock()
        && let Some(set) = g.as_mut()
    {
        set.remove(&pid);
    }
    status
}

/// Run `command` in `workdir` with `env`, stdout/stderr into the given files.
/// Returns `Ok(())` on exit status 0, else a message naming the status.
pub fn run(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
) -> Result<(), String> {
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let mut cmd = Command::new(shell);
    if shell.ends_with("bash") {
        cmd.args(["-e", "-o", "pipefail", "-c", command]);
    } else {
        cmd.args(["-e", "-c", command]);
    }
    cmd.current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let status = run_in_group(&mut cmd).map_err(|e| format!("cannot start {shell}: {e}"));
    let status = status?;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    Err(match (status.code(), status.signal()) {
        (Some(code), _) => format!("command exited with status {code}"),
        (None, Some(sig)) if CANCELLED.load(Ordering::SeqCst) => {
            format!("interrupted (signal {sig})")
        }
        (None, Some(sig)) => format!("command killed by signal {sig}"),
        _ => "command failed".into(),
    })
}
