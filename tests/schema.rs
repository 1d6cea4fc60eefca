//! The committed JSON Schema matches the Rust types; shipped workflows are valid and point to it.

use std::path::Path;

#[test]
fn committed_schema_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed =
        std::fs::read_to_string(root.join("schemas/workflow.schema.json")).unwrap_or_default();
    let generated = dnaflow::workflow::schema::workflow_schema_text();
    assert!(
        committed == generated,
        "schemas/workflow.schema.json is stale: run `cargo run -- schema --write schemas/workflow.schema.json`"
    );
}

#[test]
fn shipped_workflows_validate_and_declare_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("workflows")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/workflow.schema.json"),
            "{} must start with the $schema line",
            path.display()
        );
        if let Err(e) = dnaflow::workflow::load(&path, &Default::default()) {
            panic!("{} does not validate:\n{e}", path.display());
        }
    }
    assert!(seen > 0, "no workflows found");
}
