//! `data.fetch`: a dataset or model repository from the Hugging Face hub, downloaded with
//! hf-hub when online, resolved from the local hub cache when offline.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{StepContext, StepError, StepKind, params};

/// Parameters of `data.fetch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchParams {
    /// Repository id, e.g. `dnagpt/dna_core`.
    repo: String,
    /// `dataset` (default) or `model`.
    #[serde(default = "dataset", rename = "type")]
    repo_type: String,
    /// Branch, tag or commit; pin a commit for exact reruns (a branch can move).
    #[serde(default = "main")]
    revision: String,
    /// Files to fetch (paths inside the repository); all files of the revision when empty.
    #[serde(default)]
    files: Vec<String>,
}

fn dataset() -> String {
    "dataset".into()
}
fn main() -> String {
    "main".into()
}

pub static FETCH: StepKind = StepKind {
    name: "data.fetch",
    version: 1,
    summary: "fetch a Hugging Face dataset/model repo (offline: from the local hub cache) into `files/`",
    outputs: &[("files", "files")],
    schema: |g| g.subschema_for::<FetchParams>(),
    check: |with| {
        let p = params::<FetchParams>(with)?;
        repo_type(&p.repo_type).map(|_| ())
    },
    run,
};

fn repo_type(s: &str) -> Result<RepoType, String> {
    match s {
        "dataset" => Ok(RepoType::Dataset),
        "model" => Ok(RepoType::Model),
        other => Err(format!(
            "`type` must be `dataset` or `model`, not `{other}`"
        )),
    }
}

/// The hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// Whether `HF_HUB_OFFLINE` forbids the network.
pub fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: FetchParams = params(ctx.with).map_err(StepError::new)?;
    let kind = repo_type(&p.repo_type).map_err(StepError::new)?;
    let cache_dir = hf_cache_dir();
    let repo = Repo::with_revision(p.repo.clone(), kind, p.revision.clone());
    let dest = ctx.out.join("files");
    std::fs::create_dir_all(&dest)?;

    // The local cache first: it works offline and costs nothing.
    let local = Local::new(&cache_dir, &repo);
    let mut fetched = Vec::new();
    let mut missing = Vec::new();
    let wanted: Vec<String> = if p.files.is_empty() {
        match local.as_ref().map(Local::all_files) {
            Some(files) if !files.is_empty() => files,
            _ => Vec::new(),
        }
    } else {
        p.files.clone()
    };
    for f in &wanted {
        match local.as_ref().and_then(|l| l.file(f)) {
            Some(path) => fetched.push((f.clone(), path)),
            None => missing.push(f.clone()),
        }
    }
    let nothing_cached = wanted.is_empty();
    if !missing.is_empty() || nothing_cached {
        if hf_offline() {
            return Err(not_found(
                &p,
                &cache_dir,
                &missing,
                "HF_HUB_OFFLINE is set, so nothing was downloaded",
            ));
        }
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(cache_dir.clone())
            .with_progress(false)
            .build()
            .map_err(|e| StepError::new(format!("cannot start the Hugging Face client: {e}")))?;
        let remote = api.repo(repo.clone());
        let to_get = if nothing_cached {
            let info = remote.info().map_err(|e| {
                not_found(
                    &p,
                    &cache_dir,
                    &[],
                    &format!("listing the repository failed: {e}"),
                )
            })?;
            info.siblings.into_iter().map(|s| s.rfilename).collect()
        } else {
            missing.clone()
        };
        for f in to_get {
            let path = remote.get(&f).map_err(|e| {
                not_found(
                    &p,
                    &cache_dir,
                    std::slice::from_ref(&f),
                    &format!("download failed: {e}"),
                )
            })?;
            fetched.push((f, path));
        }
    }
    let mut bytes = 0u64;
    for (name, src) in &fetched {
        let target = dest.join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Hub blobs are never modified in place: a hard link shares the bytes safely.
        let src = std::fs::canonicalize(src)?;
        if std::fs::hard_link(&src, &target).is_err() {
            std::fs::copy(&src, &target)?;
        }
        bytes += std::fs::metadata(&target)?.len();
        writeln!(ctx.log, "{name} <- {}", src.display())?;
    }
    let commit = local.as_ref().map(|l| l.commit.clone()).unwrap_or_default();
    let metrics = serde_json::json!({ "files": fetched.len(), "bytes": bytes, "commit": commit });
    super::write_metrics(ctx.out, &metrics)?;
    Ok(())
}

fn not_found(p: &FetchParams, cache: &Path, files: &[String], why: &str) -> StepError {
    let what = if files.is_empty() {
        "any file".to_string()
    } else {
        files.join(", ")
    };
    StepError::new(format!(
        "cannot fetch {what} of {} `{}` (revision {}): {why}; not in the local hub cache {} either. \
         Download it once on a machine with network (e.g. `huggingface-cli download {} --repo-type {}`) and \
         copy the cache, or point HF_HUB_CACHE / HF_HOME at a cache that has it",
        p.repo_type,
        p.repo,
        p.revision,
        cache.display(),
        p.repo,
        p.repo_type
    ))
}

/// A repository revision as the hub cache lays it out: `refs/<rev>` → `snapshots/<commit>/…`.
struct Local {
    snapshot: PathBuf,
    commit: String,
}

impl Local {
    fn new(cache_dir: &Path, repo: &Repo) -> Option<Local> {
        let root = cache_dir.join(repo.folder_name());
        let commit = match std::fs::read_to_string(root.join("refs").join(repo.revision())) {
            Ok(c) => c.trim().to_string(),
            // A commit hash needs no ref.
            Err(_) => repo.revision().to_string(),
        };
        let snapshot = root.join("snapshots").join(&commit);
        snapshot.is_dir().then_some(Local { snapshot, commit })
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        let p = self.snapshot.join(name);
        p.exists().then_some(p)
    }

    fn all_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let _ = crate::cache::hash::walk(&self.snapshot, Path::new(""), &mut files);
        files
            .into_iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect()
    }
}
