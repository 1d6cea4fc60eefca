//! A per-key lock that holds on a filesystem shared by many nodes. `flock` does not: NFS
//! emulates it with byte-range locks (which need a working lock manager), and Lustre grants it
//! only with its `flock` mount option (with `localflock` it locks one node only, silently).
//! What every shared filesystem does atomically is create a file that must not exist
//! (`O_CREAT | O_EXCL`, on NFS since v3) and rename. So a lock here is a lease: a file created
//! exclusively, naming its holder (host, pid), whose modification time the holder refreshes
//! every few seconds. A lease whose holder is a dead process on this host, or whose time has
//! not moved for [`STALE_AFTER`] (its node died), is broken by renaming it away (one breaker
//! wins) and taken anew.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A lease untouched this long belongs to a holder that died (its heartbeat is 5 s).
pub const STALE_AFTER: Duration = Duration::from_secs(60);
const HEARTBEAT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(100);

/// A held lease; dropping it ends the heartbeat and removes the file.
pub struct Lease {
    path: PathBuf,
    /// Dropped to end the heartbeat at once.
    stop: Option<std::sync::mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

/// This machine's name, as the lease files record it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether the lease at `path` has a holder that is gone: a dead process on this host, or no
/// heartbeat for `stale_after`.
fn is_stale(path: &Path, stale_after: Duration) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut fields = text.split_whitespace();
    if let (Some(h), Some(pid)) = (
        fields.next(),
        fields.next().and_then(|p| p.parse::<i32>().ok()),
    ) && h == host()
    {
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            return true;
        }
    }
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > stale_after)
}

impl Lease {
    /// Take the lease at `path`, waiting while a live holder has it.
    pub fn acquire(path: &Path, stale_after: Duration) -> std::io::Result<Lease> {
        loop {
            match File::options().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    writeln!(f, "{} {}", host(), std::process::id())?;
                    return Ok(Lease::hold(path.to_path_buf(), f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if is_stale(path, stale_after) {
                        let aside = path.with_extension(format!(
                            "stale.{}.{}",
                            std::process::id(),
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_nanos())
                        ));
                        // Rename is atomic: of several breakers, one moves it.
                        if std::fs::rename(path, &aside).is_ok() {
                            tracing::warn!(lock = %path.display(), "broke a stale lock");
                            let _ = std::fs::remove_file(&aside);
                        }
                        continue;
                    }
                    std::thread::sleep(RETRY);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Take the lease at `path` if no live holder has it; None at once otherwise.
    pub fn try_acquire(path: &Path, stale_after: Duration) -> std::io::Result<Option<Lease>> {
        match File::options().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                writeln!(f, "{} {}", host(), std::process::id())?;
                Ok(Some(Lease::hold(path.to_path_buf(), f)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if is_stale(path, stale_after) {
                    // Waiting for it takes it over as `acquire` does.
                    return Lease::acquire(path, stale_after).map(Some);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn hold(path: PathBuf, file: File) -> Lease {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let beat = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HEARTBEAT)
            {
                let _ = file.set_modified(SystemTime::now());
            }
        });
        Lease {
            path,
            stop: Some(stop),
            beat: Some(beat),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn one_holder_at_a_time_and_the_next_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let first = Lease::acquire(&path, STALE_AFTER).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let flag = got.clone();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let _l = Lease::acquire(&p, STALE_AFTER).unwrap();
            flag.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(400));
        assert!(!got.load(Ordering::SeqCst), "a held lease is not taken");
        drop(first);
        waiter.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        assert!(!path.exists(), "a dropped lease leaves no file");
    }

    #[test]
    fn a_lease_of_a_dead_holder_or_a_silent_node_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        // A dead process on this host (pid far above any live one).
        std::fs::write(&path, format!("{} 999999999\n", host())).unwrap();
        let l = Lease::acquire(&path, STALE_AFTER).unwrap();
        drop(l);
        // Another node's lease whose heartbeat stopped long ago.
        std::fs::write(&path, "other-node 12\n").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let l = Lease::acquire(&path, STALE_AFTER).unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(&std::process::id().to_string())
        );
        drop(l);
        // Another node's live lease is not broken.
        std::fs::write(&path, "other-node 12\n").unwrap();
        assert!(!is_stale(&path, STALE_AFTER));
    }
}
