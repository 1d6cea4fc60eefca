//! `data.fetch` resolves Hugging Face repositories from a local hub cache when offline.

mod common;
use common::*;

/// Lay out a hub cache as huggingface_hub does: refs/main → snapshots/<commit>/file → ../../blobs/<hash>.
fn hub_cache(root: &std::path::Path) {
    let repo = root.join("datasets--dnagpt--tiny_dna");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/0123abcd/data")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for (name, blob, text) in [
        ("train.csv", "b1", "sequence\nACGT\n"),
        ("data/test.csv", "b2", "sequence\nGGCC\n"),
    ] {
        std::fs::write(repo.join("blobs").join(blob), text).unwrap();
        let up = if name.contains('/') {
            "../../../blobs/"
        } else {
            "../../blobs/"
        };
        std::os::unix::fs::symlink(
            format!("{up}{blob}"),
            repo.join("snapshots/0123abcd").join(name),
        )
        .unwrap();
    }
}

fn project(files: &str) -> Project {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &format!("steps:\n  get:\n    uses: data.fetch\n    with: {{ repo: dnagpt/tiny_dna, files: {files} }}\n  use:\n    run: cat ${{{{ steps.get.files }}}}/train.csv > ${{{{ out }}}}/t.csv\n"),
    );
    hub_cache(&p.path("hf/hub"));
    p
}

#[test]
fn offline_fetch_from_hub_cache() {
    let p = project("[train.csv, data/test.csv]");
    let (out, r) = {
        let mut c = p.cmd(&["run", "wf.yaml", "--report", "r.json"]);
        c.env("HF_HOME", p.path("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HUB_CACHE");
        let out = c.output().unwrap();
        (
            out,
            serde_json::from_str::<serde_json::Value>(&read(&p.path("r.json"))).unwrap(),
        )
    };
    assert!(out.status.success(), "{}", text(&out));
    let files = std::path::PathBuf::from(r["steps"][0]["out"].as_str().unwrap()).join("files");
    assert_eq!(read(&files.join("train.csv")), "sequence\nACGT\n");
    assert_eq!(read(&files.join("data/test.csv")), "sequence\nGGCC\n");
    assert_eq!(r["steps"][0]["metrics"]["commit"], "0123abcd");
    assert_eq!(r["steps"][0]["metrics"]["files"], 2);
}

#[test]
fn whole_snapshot_when_no_files_are_named() {
    let p = project("[]");
    let mut c = p.cmd(&["run", "wf.yaml", "--report", "r.json"]);
    c.env("HF_HUB_CACHE", p.path("hf/hub"))
        .env("HF_HUB_OFFLINE", "1");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_str(&read(&p.path("r.json"))).unwrap();
    assert_eq!(r["steps"][0]["metrics"]["files"], 2);
}

#[test]
fn missing_file_offline_names_repo_and_file() {
    let p = project("[valid.csv]");
    let mut c = p.cmd(&["run", "wf.yaml"]);
    c.env("HF_HUB_CACHE", p.path("hf/hub"))
        .env("HF_HUB_OFFLINE", "1");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("cannot fetch valid.csv of dataset `dnagpt/tiny_dna` (revision main)"),
        "{t}"
    );
    assert!(t.contains("HF_HUB_OFFLINE"), "{t}");
}
