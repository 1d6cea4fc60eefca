//! `dnaflow serve`: the report of the latest runs over HTTP, redrawn while a run goes on.
//! The page polls a small version string (the run record's modification time and the size of
//! its logs) once a second and swaps in the new page when it changes. Bound to 127.0.0.1
//! unless told otherwise: run records name files and hosts.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Options, render};
use crate::cache::runs;

/// Why the server could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The run records under a cache's `runs/`, newest last, with where their logs are.
pub struct Runs {
    dir: PathBuf,
}

impl Runs {
    /// The records of the cache at `cache_dir`.
    pub fn new(cache_dir: &Path) -> Runs {
        Runs {
            dir: cache_dir.join("runs"),
        }
    }

    /// `(workflow, run id)` of a run id, or of the newest run when `id` is `None`.
    fn find(&self, id: Option<&str>) -> Option<(String, String)> {
        let all = runs::list_all(&self.dir);
        match id {
            None => all.last().cloned(),
            Some(id) => all.into_iter().find(|(_, r)| r == id),
        }
    }

    fn path(&self, wf: &str, id: &str) -> PathBuf {
        runs::workflow_dir(&self.dir, wf).join(format!("{id}.json"))
    }

    fn logs(&self, wf: &str, id: &str) -> PathBuf {
        runs::workflow_dir(&self.dir, wf).join(id)
    }

    /// What changes when the run does: its record's modification time and its logs' sizes.
    fn version(&self, id: Option<&str>) -> String {
        let Some((wf, id)) = self.find(id) else {
            return "none".into();
        };
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos())
        };
        let logs: u64 = std::fs::read_dir(self.logs(&wf, &id))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        format!("{id}|{}|{logs}", stamp(&self.path(&wf, &id)))
    }

    /// The page of run `id` (the newest when `None`), or a page that says what is missing.
    pub fn page(&self, id: Option<&str>) -> (u16, String) {
        let Some((wf, run_id)) = self.find(id) else {
            let what = match id {
                Some(id) => format!("No run <code>{}</code> in this cache.", super::escape(id)),
                None => "No runs recorded in this cache yet: start one with <code>dnaflow run \
                         FILE</code>; this page follows it."
                    .to_string(),
            };
            let live = match id {
                None => "<script>setTimeout(function(){location.reload()},1000)</script>",
                Some(_) => "",
            };
            let status = if id.is_some() { 404 } else { 200 };
            return (
                status,
                format!(
                    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dnaflow \
                     </title></head><body><p>{what}</p>{live}</body></html>"
                ),
            );
        };
        let record = match runs::read(&self.path(&wf, &run_id)) {
            Ok(r) => r,
            Err(e) => {
                return (
                    500,
                    format!(
                        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>\
                         dnaflow</title></head><body><p>The record of run <code>{}</code> cannot \
                         be read: {}</p></body></html>",
                        super::escape(&run_id),
                        super::escape(&e.to_string())
                    ),
                );
            }
        };
        let vs = runs::previous(&self.dir, &wf, &run_id);
        let nav = self.latest_per_workflow();
        let live = match id {
            Some(id) => format!("/version?run={id}"),
            None => "/version".to_string(),
        };
        let opts = Options {
            vs: vs.as_ref(),
            logs: Some(self.logs(&wf, &run_id)),
            live: Some(live),
            nav,
        };
        (200, render(&record, &opts))
    }

    /// `(link, label)` of each workflow's newest run.
    fn latest_per_workflow(&self) -> Vec<(String, String)> {
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        for (wf, id) in runs::list_all(&self.dir) {
            latest.insert(wf, id);
        }
        latest
            .into_iter()
            .map(|(wf, id)| (format!("/run/{id}"), wf))
            .collect()
    }
}

/// Serve until interrupted. `ready` is called with the address once listening.
pub fn serve(
    cache_dir: &Path,
    host: &str,
    port: u16,
    ready: impl FnOnce(&str),
) -> Result<(), ServeError> {
    let addr = format!("{host}:{port}");
    let server = tiny_http::Server::http(&addr).map_err(|source| ServeError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(addr.clone(), |a| a.to_string());
    ready(&bound);
    let runs = Runs::new(cache_dir);
    while !crate::exec::CANCELLED.load(Ordering::SeqCst) {
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(300)) else {
            continue;
        };
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let run = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("run="))
            .map(str::to_string);
        let (status, body, kind) = match path {
            "/" => {
                let (s, b) = runs.page(None);
                (s, b, "text/html; charset=utf-8")
            }
            "/version" => (200, runs.version(run.as_deref()), "text/plain"),
            "/favicon.ico" => (204, String::new(), "text/plain"),
            p if p.starts_with("/run/") => {
                let (s, b) = runs.page(Some(&p["/run/".len()..]));
                (s, b, "text/html; charset=utf-8")
            }
            _ => (404, "not found".to_string(), "text/plain"),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
            .expect("a valid header");
        let no_store = tiny_http::Header::from_bytes(&b"Cache-Control"[..], &b"no-store"[..])
            .expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header)
            .with_header(no_store);
        let _ = request.respond(response);
    }
    Ok(())
}
