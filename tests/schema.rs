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

/// The schema as an editor uses it: every shipped workflow and fixture passes a real JSON
/// Schema validator (Python `jsonschema`), `${{ … }}` expressions included, and wrong literals
/// still fail. Skipped, with the reason printed, where Python lacks `jsonschema` or `yaml`.
#[test]
fn workflows_pass_a_real_json_schema_validator_and_wrong_literals_fail() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = r#"
import glob, json, sys
try:
    import jsonschema, yaml
except ImportError as e:
    print(f"SKIP: {e} (pip install jsonschema pyyaml)")
    sys.exit(0)
root = sys.argv[1]
schema = json.load(open(f"{root}/schemas/workflow.schema.json"))
validator = jsonschema.Draft7Validator(schema)
files = sorted(glob.glob(f"{root}/workflows/*.yaml") + glob.glob(f"{root}/tests/fixtures/**/*.yaml", recursive=True))
failed = 0
for f in files:
    for e in validator.iter_errors(yaml.safe_load(open(f))):
        failed += 1
        print(f"INVALID {f}: at {'.'.join(map(str, e.path))}: {e.message[:200]}")
print(f"checked {len(files)} files")
good = "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: x.txt, model: '${{ params.m }}', vocab_size: '${{ params.v }}' }\n"
if list(validator.iter_errors(yaml.safe_load(good))):
    failed += 1
    print("REJECTED a workflow whose typed values are expressions")
wrong = {
    "vocab_size: many": "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: x.txt, model: bpe, vocab_size: many }\n",
    "model: bpee": "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: x.txt, model: bpee }\n",
    "seed: 1.5": "steps:\n  s:\n    uses: data.split\n    with: { input: x.csv, seed: 1.5 }\n",
    "ratios: half": "steps:\n  s:\n    uses: data.split\n    with: { input: x.csv, ratios: half }\n",
    "retries: -1": "steps:\n  a:\n    run: echo\n    retries: -1\n",
    "unknown param": "steps:\n  s:\n    uses: data.split\n    with: { input: x.csv, sed: 1 }\n",
    "expression with text around it": "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: x.txt, model: bpe, vocab_size: 'v${{ params.v }}' }\n",
}
for name, text in wrong.items():
    if not list(validator.iter_errors(yaml.safe_load(text))):
        failed += 1
        print(f"ACCEPTED a wrong literal: {name}")
sys.exit(1 if failed else 0)
"#;
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: cannot run python3: {e}");
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.starts_with("SKIP") {
        println!("skipped: {text}");
        return;
    }
    assert!(out.status.success(), "schema validation failed:\n{text}");
    assert!(text.contains("checked"), "{text}");
}
