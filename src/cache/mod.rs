//! The content-addressed cache: objects committed atomically with a manifest, recipes, run
//! records, locks, and the `ls`, `gc`, `verify` and `pin` maintenance commands.
//!
//! Layout under the cache root:
//! ```text
//! objects/<key>/out/…          a step's outputs
//! objects/<key>/manifest.json  file hashes, recipe, metrics (written last, then renamed in)
//! tmp/<key>-…/                 outputs being written; never mistaken for an object
//! recipes/<key>.json           recipes of steps that ran (for `why`, even after failures)
//! runs/<workflow>/<id>.json    run records; step logs in runs/<workflow>/<id>/
//! locks/<key>.lock, LOCK       per-key and whole-cache locks
//! pins/<key>                   objects `gc` must keep
//! stat-cache.json              file hashes by (path, size, mtime, inode)
//! ```

pub mod hash;
pub mod key;
pub mod lease;
pub mod runs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use key::{CacheKey, Recipe};

/// Errors from the cache, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cached object matches `{0}`")]
    UnknownKey(String),
    #[error("`{0}` matches several cached objects; give more characters")]
    AmbiguousKey(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file in an object, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub blake3: String,
}

/// Written last into a finished object; an object without one does not exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub step: String,
    pub workflow: String,
    pub created: String,
    pub seconds: f64,
    pub recipe: Recipe,
    #[serde(default)]
    pub metrics: Value,
    pub files: BTreeMap<String, FileEntry>,
}

/// An open cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// Held for the length of a run (shared) or a `gc` (exclusive).
pub struct CacheLock {
    _file: File,
}

/// Held while a step computes its object, so concurrent runs never compute it twice.
pub struct KeyLock {
    _lease: lease::Lease,
}

/// Where a step writes before its object is committed.
pub struct Staging {
    pub dir: PathBuf,
    pub out: PathBuf,
}

impl Cache {
    /// Open (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        for sub in ["objects", "tmp", "recipes", "runs", "locks", "pins"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let root = std::path::absolute(root).map_err(io(root))?;
        Ok(Cache { root })
    }

    /// The cache at `root` as it is, creating nothing (a dry run reads it; a missing cache is
    /// an empty one).
    pub fn at(root: &Path) -> Result<Cache, CacheError> {
        let root = std::path::absolute(root).map_err(io(root))?;
        Ok(Cache { root })
    }

    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join("stat-cache.json")
    }

    /// Directory of the object for `key` (which may not exist).
    pub fn object_dir(&self, key: &str) -> PathBuf {
        self.objects().join(key)
    }

    /// The outputs directory of an object.
    pub fn out_dir(&self, key: &str) -> PathBuf {
        self.object_dir(key).join("out")
    }

    /// Whether a complete object exists for `key`.
    pub fn has(&self, key: &str) -> bool {
        self.object_dir(key).join("manifest.json").is_file()
    }

    /// An object's manifest.
    pub fn manifest(&self, key: &str) -> Result<Manifest, CacheError> {
        let path = self.object_dir(key).join("manifest.json");
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| CacheError::Io {
            path,
            source: std::io::Error::other(e),
        })
    }

    fn lock_file(&self) -> Result<(File, PathBuf), CacheError> {
        let path = self.root.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok((file, path))
    }

    /// Shared lock for a run; `gc` waits for every run to finish.
    pub fn lock_shared(&self) -> Result<CacheLock, CacheError> {
        let (file, path) = self.lock_file()?;
        file.lock_shared().map_err(io(&path))?;
        Ok(CacheLock { _file: file })
    }

    /// Exclusive lock for maintenance; `None` when a run holds the cache and `wait` is false.
    pub fn lock_exclusive(&self, wait: bool) -> Result<Option<CacheLock>, CacheError> {
        let (file, path) = self.lock_file()?;
        if wait {
            file.lock().map_err(io(&path))?;
        } else if file.try_lock().is_err() {
            return Ok(None);
        }
        Ok(Some(CacheLock { _file: file }))
    }

    /// Lock `key` for computing (blocks while another run computes it, on this node or any
    /// other sharing the cache: see [`lease`]).
    pub fn lock_key(&self, key: &str) -> Result<KeyLock, CacheError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let lease = lease::Lease::acquire(&path, lease::STALE_AFTER).map_err(io(&path))?;
        Ok(KeyLock { _lease: lease })
    }

    /// Remember the recipe of a key, for `why` after failures or later changes.
    pub fn save_recipe(&self, key: &str, recipe: &Recipe) -> Result<(), CacheError> {
        let path = self.root.join("recipes").join(format!("{key}.json"));
        if path.exists() {
            return Ok(());
        }
        runs::write_json_atomic(&path, recipe).map_err(io(&path))
    }

    /// The recipe of a key, from its object or the recipe store.
    pub fn recipe(&self, key: &str) -> Option<Recipe> {
        let path = self.root.join("recipes").join(format!("{key}.json"));
        if let Ok(bytes) = std::fs::read(&path) {
            return serde_json::from_slice(&bytes).ok();
        }
        self.manifest(key).ok().map(|m| m.recipe)
    }

    /// Where a step with `key` keeps checkpoints between attempts and runs (kill -9 included);
    /// removed when the step's object is committed.
    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.root.join("checkpoints").join(key)
    }

    /// Give `key`'s checkpoints to a run of `family` ([`Recipe::key_without`]): the same
    /// training on another number of ranks. When `key` has no checkpoint yet and a family
    /// member that no run is computing left one (it was killed or failed), that checkpoint
    /// moves to `key`, and its key is returned: the run resumes where the other stopped.
    /// Call with `key` locked.
    pub fn adopt_checkpoint(&self, key: &str, family: &str) -> Result<Option<String>, CacheError> {
        let mine = self.checkpoint_dir(key);
        std::fs::create_dir_all(&mine).map_err(io(&mine))?;
        let mark = mine.join("family");
        std::fs::write(&mark, family).map_err(io(&mark))?;
        if mine.join("checkpoint").exists() || mine.join("checkpoint.old").exists() {
            return Ok(None);
        }
        let Ok(entries) = std::fs::read_dir(self.root.join("checkpoints")) else {
            return Ok(None);
        };
        for entry in entries.flatten() {
            let other = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if other == key
                || std::fs::read_to_string(dir.join("family")).ok().as_deref() != Some(family)
            {
                continue;
            }
            let lock = self.root.join("locks").join(format!("{other}.lock"));
            let Some(_held) =
                lease::Lease::try_acquire(&lock, lease::STALE_AFTER).map_err(io(&lock))?
            else {
                continue; // another run is training it now
            };
            let mut moved = false;
            for name in ["checkpoint", "checkpoint.old"] {
                if dir.join(name).exists() {
                    std::fs::rename(dir.join(name), mine.join(name)).map_err(io(&mine))?;
                    moved = true;
                }
            }
            if moved {
                // What else the loop kept beside (the best weights) goes with it.
                for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                    let name = e.file_name();
                    if name != "family" && !mine.join(&name).exists() {
                        let _ = std::fs::rename(e.path(), mine.join(&name));
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(Some(other));
            }
        }
        Ok(None)
    }

    /// A fresh staging directory for `key`.
    pub fn stage(&self, key: &str) -> Result<Staging, CacheError> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{key}-{}-{nanos}", std::process::id()));
        let out = dir.join("out");
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        Ok(Staging { dir, out })
    }

    /// Hash the staged outputs, write the manifest, and rename the whole into place.
    /// If another run committed the same key meanwhile, its object wins and ours is dropped.
    pub fn commit(&self, staging: Staging, mut manifest: Manifest) -> Result<(), CacheError> {
        manifest.files = hash_tree(&staging.out)?;
        let mpath = staging.dir.join("manifest.json");
        runs::write_json_atomic(&mpath, &manifest).map_err(io(&mpath))?;
        let target = self.object_dir(&manifest.key);
        let _ = std::fs::remove_dir_all(self.checkpoint_dir(&manifest.key));
        match std::fs::rename(&staging.dir, &target) {
            Ok(()) => Ok(()),
            Err(_) if self.has(&manifest.key) => {
                let _ = std::fs::remove_dir_all(&staging.dir);
                Ok(())
            }
            Err(e) => Err(CacheError::Io {
                path: target,
                source: e,
            }),
        }
    }

    /// Drop a staging directory (after a failure).
    pub fn discard(&self, staging: &Staging) {
        let _ = std::fs::remove_dir_all(&staging.dir);
    }

    /// Keys of every complete object.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = std::fs::read_dir(self.objects())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|k| self.has(k))
            .collect();
        keys.sort();
        keys
    }

    /// The one object key starting with `prefix`.
    pub fn resolve_key(&self, prefix: &str) -> Result<String, CacheError> {
        let found: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        match found.len() {
            0 => Err(CacheError::UnknownKey(prefix.into())),
            1 => Ok(found.into_iter().next().expect("one")),
            _ => Err(CacheError::AmbiguousKey(prefix.into())),
        }
    }

    /// Keys `gc` must keep regardless of limits.
    pub fn pins(&self) -> HashSet<String> {
        std::fs::read_dir(self.root.join("pins"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    }

    pub fn pin(&self, key: &str, pinned: bool) -> Result<(), CacheError> {
        let path = self.root.join("pins").join(key);
        if pinned {
            std::fs::write(&path, b"").map_err(io(&path))
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(CacheError::Io { path, source: e })
                }
                _ => Ok(()),
            }
        }
    }

    /// Check every object against its manifest.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        for entry in std::fs::read_dir(self.objects())
            .into_iter()
            .flatten()
            .flatten()
        {
            let key = entry.file_name().to_string_lossy().into_owned();
            report.checked += 1;
            let manifest = match self.manifest(&key) {
                Ok(m) => m,
                Err(e) => {
                    report
                        .problems
                        .push((key, format!("unreadable manifest: {e}")));
                    continue;
                }
            };
            if manifest.key != key {
                report
                    .problems
                    .push((key.clone(), format!("manifest says key {}", manifest.key)));
            }
            match hash_tree(&self.out_dir(&key)) {
                Ok(actual) => {
                    for (name, want) in &manifest.files {
                        match actual.get(name) {
                            None => report
                                .problems
                                .push((key.clone(), format!("missing file {name}"))),
                            Some(got) if got != want => report.problems.push((
                                key.clone(),
                                format!("file {name} changed since it was written"),
                            )),
                            _ => {}
                        }
                    }
                    for name in actual.keys().filter(|n| !manifest.files.contains_key(*n)) {
                        report
                            .problems
                            .push((key.clone(), format!("unexpected file {name}")));
                    }
                }
                Err(e) => report.problems.push((key, e.to_string())),
            }
        }
        report.staging = std::fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .count();
        report
    }

    /// Remove an object (used by `verify --fix` and `gc`).
    pub fn remove(&self, key: &str) -> Result<u64, CacheError> {
        let dir = self.object_dir(key);
        let size = dir_size(&dir);
        // Rename first so a concurrent reader never sees a half-deleted object.
        let trash = self
            .root
            .join("tmp")
            .join(format!("deleting-{key}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(io(&dir))?;
        std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
        let _ = std::fs::remove_file(self.root.join("recipes").join(format!("{key}.json")));
        Ok(size)
    }

    /// Listing for `cache ls`: key, manifest, size, newest use.
    pub fn list(&self) -> Vec<ObjectInfo> {
        self.list_with(&self.last_used())
    }

    fn list_with(&self, last_used: &HashMap<String, String>) -> Vec<ObjectInfo> {
        self.keys()
            .into_iter()
            .filter_map(|k| {
                let m = self.manifest(&k).ok()?;
                Some(ObjectInfo {
                    size: dir_size(&self.object_dir(&k)),
                    last_used: last_used
                        .get(&k)
                        .cloned()
                        .unwrap_or_else(|| m.created.clone()),
                    pinned: false,
                    key: k,
                    manifest: m,
                })
            })
            .map(|mut o| {
                o.pinned = self.root.join("pins").join(&o.key).exists();
                o
            })
            .collect()
    }

    /// Newest run start (RFC 3339) that used each key.
    fn last_used(&self) -> HashMap<String, String> {
        let mut used: HashMap<String, String> = HashMap::new();
        for (wf, id) in runs::list_all(&self.runs()) {
            let path = runs::workflow_dir(&self.runs(), &wf).join(format!("{id}.json"));
            if let Ok(rec) = runs::read(&path) {
                for s in rec.steps {
                    let e = used.entry(s.key).or_default();
                    if *e < rec.started {
                        *e = rec.started.clone();
                    }
                }
            }
        }
        used
    }

    /// Collect garbage; see [`GcOptions`]. Needs the exclusive lock (no run in progress).
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, CacheError> {
        tracing::info!(?opts, "collecting garbage");
        let mut report = GcReport::default();
        let runs_dir = self.runs();
        // 1. Old run records beyond `keep_runs` per workflow, with their logs.
        for wf in std::fs::read_dir(&runs_dir).into_iter().flatten().flatten() {
            let name = wf.file_name().to_string_lossy().into_owned();
            let ids = runs::list(&runs_dir, &name);
            let drop = ids.len().saturating_sub(opts.keep_runs.max(1));
            for id in &ids[..drop] {
                let dir = runs::workflow_dir(&runs_dir, &name);
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
                let _ = std::fs::remove_dir_all(dir.join(id));
                report.runs_removed += 1;
            }
        }
        // 2. What must stay: pins and the latest run of every workflow.
        let mut keep = self.pins();
        for wf in std::fs::read_dir(&runs_dir).into_iter().flatten().flatten() {
            if let Some(rec) = runs::latest(&runs_dir, &wf.file_name().to_string_lossy()) {
                keep.extend(rec.steps.into_iter().map(|s| s.key));
            }
        }
        // Every key a kept run record mentions, with its newest use (reads the records once).
        let last_used = self.last_used();
        // 3. Candidates, least recently used first.
        let mut objects = self.list_with(&last_used);
        objects.sort_by(|a, b| a.last_used.cmp(&b.last_used));
        let mut total: u64 = objects.iter().map(|o| o.size).sum();
        let now = SystemTime::now();
        for o in &objects {
            if keep.contains(&o.key) {
                continue;
            }
            let age = humantime::parse_rfc3339_weak(&o.last_used)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or(Duration::ZERO);
            let unreferenced = !last_used.contains_key(&o.key);
            let too_old = opts.max_age.is_some_and(|m| age > m);
            let too_big = opts.max_size.is_some_and(|m| total > m);
            if unreferenced || too_old || too_big {
                let freed = self.remove(&o.key)?;
                total = total.saturating_sub(freed);
                report.objects_removed += 1;
                report.bytes_freed += freed;
            }
        }
        report.bytes_kept = total;
        // 4. Leftovers: staging dirs of killed runs, recipes and locks of vanished keys.
        for e in std::fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            report.bytes_freed += dir_size(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
            report.staging_removed += 1;
        }
        let live: HashSet<String> = last_used.into_keys().chain(self.keys()).collect();
        // Checkpoints of unfinished training steps stay while a run record still names their key.
        for sub in ["recipes", "locks", "checkpoints"] {
            for e in std::fs::read_dir(self.root.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split('.').next().unwrap_or("");
                if !live.contains(key) {
                    let _ = std::fs::remove_file(e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(report)
    }
}

/// One object in `cache ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_used: String,
    pub pinned: bool,
    pub manifest: Manifest,
}

/// Limits for `cache gc`. Unreferenced objects always go; pinned ones and those of each
/// workflow's latest run always stay.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub max_size: Option<u64>,
    pub max_age: Option<Duration>,
    pub keep_runs: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub objects_removed: usize,
    pub runs_removed: usize,
    pub staging_removed: usize,
    pub bytes_freed: u64,
    pub bytes_kept: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub problems: Vec<(String, String)>,
    /// Staging directories left by interrupted runs (harmless; `gc` removes them).
    pub staging: usize,
}

/// blake3 and size of every file under `dir`, by relative path.
pub fn hash_tree(dir: &Path) -> Result<BTreeMap<String, FileEntry>, CacheError> {
    let mut files = Vec::new();
    hash::walk(dir, Path::new(""), &mut files).map_err(io(dir))?;
    use rayon::prelude::*;
    files
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            let blake3 = hash::hash_file(&path).map_err(io(&path))?;
            Ok((
                rel.to_string_lossy().into_owned(),
                FileEntry { size, blake3 },
            ))
        })
        .collect()
}

/// Total bytes of files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let mut files = Vec::new();
    if hash::walk(path, Path::new(""), &mut files).is_err() {
        return 0;
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(path.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
