//! `publish:`: named outputs copied out of the cache to where a user reads them, after a step
//! succeeds (a step's `publish:`) or after the whole run has (the workflow's `publish:`).

use std::path::{Path, PathBuf};

use crate::cache::Cache;
use crate::workflow::{Part, Step, Workflow};

/// Copy the step's `publish:` outputs (object `key`) to their destinations; the destinations,
/// or what went wrong.
pub fn publish(
    wf: &Workflow,
    cache: &Cache,
    key: &str,
    step: &Step,
) -> Result<Vec<(String, PathBuf)>, String> {
    let cache_root = cache_root(cache)?;
    let mut done = Vec::new();
    for (output, dest) in &step.publish {
        let rel = dest.render(&mut |p| match p {
            Part::Text(t) | Part::Param { text: t, .. } => vec![t.clone()],
            Part::Out | Part::Output { .. } => Vec::new(),
        });
        let what = format!("`publish: {{ {output}: {rel} }}`");
        let dest = wf.workdir.join(&rel);
        done.push((
            output.clone(),
            copy_output(cache, &cache_root, key, step, output, &dest, &what)?,
        ));
    }
    Ok(done)
}

/// What the workflow's `publish:` did.
#[derive(Debug, Default)]
pub struct Published {
    /// Per output copied: its name (`step.output`) and where it went.
    pub done: Vec<(String, PathBuf)>,
    /// Outputs whose step was not part of the run (`step.output`).
    pub left_out: Vec<String>,
}

/// Copy the workflow's `publish:` outputs of the steps this run holds (`keys` by step index,
/// `in_run`) into its folder, `<to>/<step>/<file>`.
pub fn publish_workflow(
    wf: &Workflow,
    cache: &Cache,
    keys: &[String],
    in_run: &[bool],
) -> Result<Published, String> {
    let Some(publish) = &wf.publish else {
        return Ok(Published::default());
    };
    let cache_root = cache_root(cache)?;
    let folder = wf.workdir.join(&publish.to);
    let what = format!("the workflow's `publish: {{ to: {} }}`", publish.to);
    let (mut done, mut left_out) = (Vec::new(), Vec::new());
    for (i, output) in &publish.outputs {
        let step = &wf.steps[*i];
        let name = format!("{}.{output}", step.name);
        if !in_run[*i] {
            left_out.push(name);
            continue;
        }
        let inner = &step.outputs[output.as_str()];
        let dest = folder.join(&step.name).join(inner);
        done.push((
            name,
            copy_output(cache, &cache_root, &keys[*i], step, output, &dest, &what)?,
        ));
    }
    Ok(Published { done, left_out })
}

/// The cache's root folder, absolute: nothing is ever published into it.
fn cache_root(cache: &Cache) -> Result<PathBuf, String> {
    std::path::absolute(cache.objects().parent().unwrap_or(Path::new(".")))
        .map_err(|e| e.to_string())
}

/// Copy one output of `step` (object `key`) to `dest`, refusing a destination inside the cache
/// (`what` names the setting that chose it); the absolute destination.
fn copy_output(
    cache: &Cache,
    cache_root: &Path,
    key: &str,
    step: &Step,
    output: &str,
    dest: &Path,
    what: &str,
) -> Result<PathBuf, String> {
    let dest = std::path::absolute(dest).map_err(|e| e.to_string())?;
    if dest.starts_with(cache_root) {
        return Err(format!(
            "{what} points into the cache ({}); choose a folder outside it",
            cache_root.display()
        ));
    }
    let inner = &step.outputs[output];
    let out = cache.out_dir(key);
    let src = if inner.is_empty() {
        out
    } else {
        out.join(inner)
    };
    copy_tree(&src, &dest).map_err(|e| {
        format!(
            "publishing `{}.{output}` to {}: {e} (from {})",
            step.name,
            dest.display(),
            src.display()
        )
    })?;
    Ok(dest)
}

/// Copy a file or a directory's files, skipping a file whose copy is already there (same size,
/// not older); copies are left writable by their owner.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let from = std::fs::metadata(src)?;
    if let Ok(to) = std::fs::metadata(dst)
        && to.is_file()
        && to.len() == from.len()
        && matches!((to.modified(), from.modified()), (Ok(t), Ok(f)) if t >= f)
    {
        return Ok(());
    }
    if dst.exists() {
        // A read-only earlier copy cannot be written over.
        std::fs::remove_file(dst)?;
    }
    std::fs::copy(src, dst)?;
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(dst)?.permissions();
    perm.set_mode(perm.mode() | 0o200);
    std::fs::set_permissions(dst, perm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_once_and_a_read_only_copy_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        std::fs::write(src.join("sub/b.txt"), "bb").unwrap();
        let dst = tmp.path().join("pub/model");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("sub/b.txt")).unwrap(),
            "bb"
        );
        std::fs::write(src.join("a.txt"), "changed").unwrap();
        let mut ro = std::fs::metadata(dst.join("a.txt")).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        ro.set_mode(0o444);
        std::fs::set_permissions(dst.join("a.txt"), ro).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("a.txt")).unwrap(),
            "changed"
        );
    }
}
