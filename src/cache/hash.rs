//! Content hashes of project files, with a stat cache so unchanged big files are not re-read.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Files at least this big are memory-mapped and hashed on every core (blake3's tree mode);
/// below it, one buffered read is faster than setting up a mapping and waking threads.
const PARALLEL_HASH_BYTES: u64 = 1 << 20;

/// blake3 of a file's bytes, as hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_file_sized(path, std::fs::metadata(path)?.len())
}

/// [`hash_file`] of a file whose size is known already (one `stat` fewer per file).
fn hash_file_sized(path: &Path, size: u64) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    if size >= PARALLEL_HASH_BYTES {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut bytes = Vec::with_capacity(size as usize);
        std::fs::File::open(path)?.read_to_end(&mut bytes)?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    hash: String,
}

/// Remembers file hashes by (path, size, mtime, inode).
#[derive(Debug, Default)]
pub struct StatCache {
    entries: HashMap<PathBuf, StatEntry>,
    dirty: bool,
}

impl StatCache {
    /// Load from `path`; a missing or unreadable file gives an empty cache.
    pub fn load(path: &Path) -> StatCache {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            entries,
            dirty: false,
        }
    }

    /// Write back if anything changed (atomically: temp file + rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&self.entries)?)?;
        std::fs::rename(tmp, path)
    }

    /// Hash of a file or a directory (over sorted relative paths and file hashes).
    pub fn hash_path(&mut self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, Path::new(""), &mut files)?;
            let abs: Vec<PathBuf> = files.iter().map(|rel| path.join(rel)).collect();
            let hashes = self.hash_files(&abs)?;
            let mut hasher = blake3::Hasher::new();
            for (rel, h) in files.iter().zip(hashes) {
                hasher.update(rel.to_string_lossy().as_bytes());
                hasher.update(b"\0");
                hasher.update(h.as_bytes());
                hasher.update(b"\n");
            }
            Ok(format!("dir:{}", &hasher.finalize().to_hex()[..32]))
        } else {
            Ok(self.hash_files(&[path.to_path_buf()])?.remove(0))
        }
    }

    /// Hashes of `paths` (files), in order: remembered ones looked up, the rest read in parallel.
    fn hash_files(&mut self, paths: &[PathBuf]) -> std::io::Result<Vec<String>> {
        let mut hashes: Vec<Option<String>> = Vec::with_capacity(paths.len());
        let mut todo = Vec::new();
        // Stat in parallel too: for many small files the system calls are most of the work.
        for (i, seen) in each_maybe_parallel(paths, |p| Seen::of(p))
            .into_iter()
            .enumerate()
        {
            let seen = seen?;
            match self.entries.get(&seen.abs) {
                Some(e) if seen.matches(e) => hashes.push(Some(e.hash.clone())),
                _ => {
                    hashes.push(None);
                    todo.push((i, seen));
                }
            }
        }
        let fresh = each_maybe_parallel(&todo, |(i, seen)| {
            tracing::debug!(path = %paths[*i].display(), bytes = seen.size, "hashing input");
            hash_file_sized(&paths[*i], seen.size)
        });
        for ((i, seen), hash) in todo.into_iter().zip(fresh) {
            let hash = hash?;
            // A file modified within the clock's resolution of now could change again unseen
            // with the same mtime; only remember hashes of files that have been still a while.
            if seen.settled {
                self.entries.insert(
                    seen.abs,
                    StatEntry {
                        size: seen.size,
                        mtime_ns: seen.mtime_ns,
                        ino: seen.ino,
                        hash: hash.clone(),
                    },
                );
                self.dirty = true;
            }
            hashes[i] = Some(hash);
        }
        Ok(hashes
            .into_iter()
            .map(|h| h.expect("every file hashed"))
            .collect())
    }
}

/// `f` of every item, in order: on rayon's pool when there are several, on this thread for
/// one or none (a no-op rerun hashes nothing and should not wake the pool for it).
fn each_maybe_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if items.len() > 1 {
        items.par_iter().map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}

/// What the stat cache compares: a file's absolute path, size, mtime and inode.
struct Seen {
    abs: PathBuf,
    size: u64,
    mtime_ns: i128,
    ino: u64,
    settled: bool,
}

impl Seen {
    fn of(path: &Path) -> std::io::Result<Seen> {
        let meta = std::fs::metadata(path)?;
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > Duration::from_secs(2));
        Ok(Seen {
            abs: std::path::absolute(path)?,
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ino: meta.ino(),
            settled,
        })
    }

    fn matches(&self, e: &StatEntry) -> bool {
        e.size == self.size && e.mtime_ns == self.mtime_ns && e.ino == self.ino
    }
}

/// Relative paths of every file under `dir`, sorted.
pub fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_files_are_not_read_again() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("big.fa");
        std::fs::write(&path, "ACGT").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        let touch = |t: SystemTime| {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(t).unwrap();
        };
        touch(old);
        let mut sc = StatCache::default();
        let first = sc.hash_path(&path).unwrap();
        // Same size, inode and mtime: the remembered hash is used, the bytes are not read.
        std::fs::write(&path, "TTTT").unwrap();
        touch(old);
        assert_eq!(sc.hash_path(&path).unwrap(), first);
        // A new mtime means a new read.
        touch(old + Duration::from_secs(1));
        assert_ne!(sc.hash_path(&path).unwrap(), first);
        // And the cache survives a save and load.
        let file = d.path().join("stat.json");
        sc.save(&file).unwrap();
        assert_eq!(StatCache::load(&file).entries.len(), 1);
    }

    #[test]
    fn dir_hash_depends_on_names_and_bytes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), "1").unwrap();
        let mut sc = StatCache::default();
        let h1 = sc.hash_path(d.path()).unwrap();
        std::fs::write(d.path().join("sub/a"), "2").unwrap();
        let h2 = sc.hash_path(d.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(d.path().join("sub/a"), d.path().join("sub/b")).unwrap();
        assert_ne!(h2, sc.hash_path(d.path()).unwrap());
    }
}
