//! `publish:`: a step's named outputs copied out of the cache to where a user reads them.

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
    let cache_root = std::path::absolute(cache.objects().parent().unwrap_or(Path::new(".")))
        .map_err(|e| e.to_string())?;
    let mut done = Vec::new();
    for (output, dest) in &step.publish {
        let rel = dest.render(&mut |p| match p {
            Part::Text(t) | Part::Param { text: t, .. } => vec![t.clone()],
            Part::Out | Part::Output { .. } => Vec::new(),
        });
        let dest = std::path::absolute(wf.workdir.join(&rel)).map_err(|e| e.to_string())?;
        if dest.starts_with(&cache_root) {
            return Err(format!(
                "`publish: {{ {output}: {rel} }}` points into the cache ({}); choose a folder \
                 outside it",
                cache_root.display()
            ));
        }
        let inner = &step.outputs[output.as_str()];
        let out = cache.out_dir(key);
        let src = if inner.is_empty() {
            out
        } else {
            out.join(inner)
        };
        copy_tree(&src, &dest).map_err(|e| {
            format!(
                "publishing `{output}` to {}: {e} (from {})",
                dest.display(),
                src.display()
            )
        })?;
        done.push((output.clone(), dest));
    }
    Ok(done)
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
