//! Every file a built-in kind reads enters its key: editing a literal input file reruns the
//! step that names it and that step's dependents, for every kind and every file parameter, and
//! no shipped workflow hands a kind a path the key does not cover.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::Project;
use dnaflow::steps::{KINDS, input_pointers, pointer_name};
use dnaflow::workflow::{Action, Param};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// (step, kind, parameter as a pointer, the literal file or directory it names).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("load", "data.load", "path", "load.fa"),
    ("split", "data.split", "input", "split.csv"),
    ("filter", "data.filter", "input", "filter.csv"),
    ("sample", "data.sample", "input", "sample.csv"),
    ("concat", "data.concat", "inputs.*", "concat_a.csv"),
    ("concat", "data.concat", "inputs.*", "concat_b.csv"),
    ("concat_one", "data.concat", "inputs", "concat_one.csv"),
    ("stats", "data.stats", "input", "stats.csv"),
    ("pairs", "data.pairs", "input", "pairs.json"),
    ("keywords", "data.keywords", "input", "keywords.json"),
    ("instruct", "data.instruct", "input", "instruct.json"),
    ("instruct", "data.instruct", "tokenizer", "instruct_tok"),
    ("extend", "tokenizer.extend", "base", "extend_base"),
    ("extend", "tokenizer.extend", "train.*", "extend_train.txt"),
    ("extend", "tokenizer.extend", "heldout.*", "extend_held.txt"),
    ("resize", "model.resize", "model", "resize_model"),
    ("resize", "model.resize", "tokenizer", "resize_tok.json"),
    ("tok_train", "tokenizer.train", "input", "tok_train.txt"),
    ("tok_eval", "tokenizer.eval", "tokenizer", "tok_eval.json"),
    ("tok_eval", "tokenizer.eval", "input", "tok_eval.txt"),
    ("pretrain", "model.pretrain", "tokenizer", "pre_tok.json"),
    ("pretrain", "model.pretrain", "train", "pre_train.txt"),
    ("pretrain", "model.pretrain", "valid", "pre_valid.txt"),
    ("pretrain", "model.pretrain", "init", "pre_init"),
    ("lm", "eval.lm", "model", "lm_model"),
    ("lm", "eval.lm", "data", "lm_data.txt"),
    ("lm", "eval.lm", "tokenizer", "lm_tok.json"),
    ("lm", "eval.lm", "baseline", "lm_baseline.json"),
    ("generate", "model.generate", "model", "gen_model"),
    ("markov", "eval.markov", "train", "markov_train.txt"),
    ("markov", "eval.markov", "test", "markov_test.txt"),
    ("classify", "eval.classify", "predictions", "classify.csv"),
    (
        "classify_by",
        "eval.classify",
        "by.table",
        "classify_by.json",
    ),
    ("regress", "eval.regress", "predictions", "regress.json"),
    ("text", "eval.text", "predictions", "text.json"),
    ("nearest", "baseline.nearest", "train", "nearest_train.json"),
    ("nearest", "baseline.nearest", "test", "nearest_test.json"),
    ("bl_cls", "baseline.classify", "train", "bl_cls_train.json"),
    ("bl_cls", "baseline.classify", "test", "bl_cls_test.json"),
    ("bl_cls", "baseline.classify", "valid", "bl_cls_valid.json"),
    ("bl_reg", "baseline.regress", "train", "bl_reg_train.json"),
    ("bl_reg", "baseline.regress", "test", "bl_reg_test.json"),
    ("bl_reg", "baseline.regress", "valid", "bl_reg_valid.json"),
    ("bl_pb", "baseline.per-base", "train", "bl_pb_train.json"),
    ("bl_pb", "baseline.per-base", "test", "bl_pb_test.json"),
    ("bl_pb", "baseline.per-base", "valid", "bl_pb_valid.json"),
    ("finetune", "model.finetune", "init", "ft_init"),
    ("finetune", "model.finetune", "tokenizer", "ft_tok.json"),
    ("finetune", "model.finetune", "train", "ft_train.json"),
    ("finetune", "model.finetune", "valid", "ft_valid.json"),
    ("finetune", "model.finetune", "test", "ft_test.json"),
    ("embed", "model.embed", "model", "emb_model"),
    ("embed", "model.embed", "data", "emb_data.json"),
    ("embed", "model.embed", "tokenizer", "emb_tok.json"),
    ("score", "model.score", "model", "score_model"),
    ("score", "model.score", "data", "score_data.csv"),
    ("score", "model.score", "tokenizer", "score_tok.json"),
    ("probe", "eval.probe", "embeddings", "probe_fit.json"),
    ("probe", "eval.probe", "test", "probe_test.json"),
    (
        "probe",
        "eval.probe",
        "pair_embeddings",
        "probe_pair_fit.json",
    ),
    ("probe", "eval.probe", "pair_test", "probe_pair_test.json"),
    ("project", "eval.project", "embeddings", "project.json"),
];

const WORKFLOW: &str = r#"
name: every-input
steps:
  load: { uses: data.load, with: { path: load.fa, format: fasta } }
  split: { uses: data.split, with: { input: split.csv, ratios: [0.5, 0.25, 0.25], seed: 1 } }
  filter: { uses: data.filter, with: { input: filter.csv, min_length: 2 } }
  sample: { uses: data.sample, with: { input: sample.csv, n: 2, seed: 1 } }
  concat: { uses: data.concat, with: { inputs: [concat_a.csv, concat_b.csv] } }
  concat_one: { uses: data.concat, with: { inputs: concat_one.csv } }
  stats: { uses: data.stats, with: { input: stats.csv } }
  keywords: { uses: data.keywords, with: { input: keywords.json, column: product, labels: { kinase: [kinase] } } }
  instruct: { uses: data.instruct, with: { input: instruct.json, task: t, instruction: "Which?", answers: { "1": "yes", "0": "no" }, template: chat, tokenizer: instruct_tok } }
  extend: { uses: tokenizer.extend, with: { base: extend_base, train: [extend_train.txt], new_pieces: 5, min_frequency: 1, heldout: { dna: extend_held.txt } } }
  resize: { uses: model.resize, with: { model: resize_model, tokenizer: resize_tok.json } }
  pairs: { uses: data.pairs, with: { input: pairs.json, left: dna, right: protein, substitutions: 1, seed: 1 } }
  tok_train: { uses: tokenizer.train, with: { input: tok_train.txt, model: char } }
  tok_eval: { uses: tokenizer.eval, with: { tokenizer: tok_eval.json, input: tok_eval.txt } }
  pretrain:
    uses: model.pretrain
    with:
      arch: gpt2
      tokenizer: pre_tok.json
      train: pre_train.txt
      valid: pre_valid.txt
      init: pre_init
      seq_len: 16
      batch_size: 2
      steps: 2
      eval_every: 2
  lm: { uses: eval.lm, with: { model: lm_model, data: lm_data.txt, tokenizer: lm_tok.json, baseline: lm_baseline.json, seq_len: 16 } }
  generate: { uses: model.generate, with: { model: gen_model, prompts: [ACG], max_new_tokens: 4, seed: 1 } }
  markov: { uses: eval.markov, with: { train: markov_train.txt, test: markov_test.txt, order: 1 } }
  classify: { uses: eval.classify, with: { predictions: classify.csv, bootstrap: 10 } }
  classify_by: { uses: eval.classify, with: { predictions: classify_by_pred.json, bootstrap: 0, by: { table: classify_by.json, column: kind } } }
  regress: { uses: eval.regress, with: { predictions: regress.json, bootstrap: 10 } }
  text: { uses: eval.text, with: { predictions: text.json, bootstrap: 10 } }
  nearest: { uses: baseline.nearest, with: { train: nearest_train.json, test: nearest_test.json, k: 1 } }
  bl_cls: { uses: baseline.classify, with: { train: bl_cls_train.json, test: bl_cls_test.json, valid: bl_cls_valid.json } }
  bl_reg: { uses: baseline.regress, with: { train: bl_reg_train.json, test: bl_reg_test.json, valid: bl_reg_valid.json } }
  bl_pb: { uses: baseline.per-base, with: { train: bl_pb_train.json, test: bl_pb_test.json, valid: bl_pb_valid.json, window: 1 } }
  finetune:
    uses: model.finetune
    with: { task: seq-cls, init: ft_init, tokenizer: ft_tok.json, train: ft_train.json, valid: ft_valid.json, test: ft_test.json, steps: 2, batch_size: 2 }
  embed: { uses: model.embed, with: { model: emb_model, data: emb_data.json, tokenizer: emb_tok.json } }
  score: { uses: model.score, with: { model: score_model, mode: likelihood, data: score_data.csv, tokenizer: score_tok.json } }
  probe: { uses: eval.probe, with: { embeddings: probe_fit.json, test: probe_test.json, pair_embeddings: probe_pair_fit.json, pair_test: probe_pair_test.json } }
  project: { uses: eval.project, with: { embeddings: project.json } }
"#;

/// A dependent shell step per step, so a rerun must reach downstream too.
fn dependents() -> String {
    let steps: BTreeSet<&str> = CASES.iter().map(|c| c.0).collect();
    steps
        .iter()
        .map(|s| {
            format!("  after_{s}:\n    run: ls ${{{{ steps.{s}.out }}}} > ${{{{ out }}}}/ls.txt\n")
        })
        .collect()
}

const SEQS: &str = "ACGTACGTTAGC\nGGCATTACAGTA\nTTAGGCATCAGA\nCAGTTAGCATGA\n";

/// A project holding every file of [`CASES`], with a tiny model trained first for the kinds
/// that read a model directory.
fn project() -> Project {
    let p = Project::new();
    let char_tok = Path::new(FIXTURES).join("tokenizers/char.json");
    let table = "id,sequence\nr0,ACGTACGTTAGC\nr1,GGCATTACAGTA\nr2,TTAGGCATCAGA\nr3,CAGTTAGCATGA\n";
    for f in [
        "split.csv",
        "filter.csv",
        "sample.csv",
        "concat_a.csv",
        "concat_b.csv",
    ] {
        p.write(f, table);
    }
    p.write("concat_one.csv", table)
        .write("stats.csv", table)
        .write("score_data.csv", table);
    p.write("load.fa", ">a\nACGTACGTTAGC\n>b\nGGCATTACAGTA\n");
    // Predictions: the edit appends a row `r9,GATTACAGATTACA` (two new classes) to the CSV, and
    // rewrites the JSON table without changing its values, so both stay scoreable.
    p.write(
        "classify.csv",
        "label,prediction\nneg,neg\npos,pos\npos,neg\nneg,neg\n",
    );
    p.write(
        "regress.json",
        r#"[{"label": 1.5, "prediction": 1.0}, {"label": 2.0, "prediction": 2.5}, {"label": 3.0, "prediction": 2.0}]"#,
    );
    // Baseline tables as JSON, which the edit re-spells without changing a value.
    let labelled = r#"[{"id": "r0", "sequence": "ACGTAC", "label": 1}, {"id": "r1", "sequence": "GGCATT", "label": 0}, {"id": "r2", "sequence": "ACGTTT", "label": 1}]"#;
    for f in ["bl_cls_train.json", "bl_cls_test.json", "bl_cls_valid.json"] {
        p.write(f, labelled);
    }
    for f in ["bl_reg_train.json", "bl_reg_test.json", "bl_reg_valid.json"] {
        p.write(f, &labelled.replace("\"label\": 1", "\"label\": 2.5"));
    }
    let structures = r#"[{"id": "r0", "sequence": "ACGTAC", "label": "((..))"}, {"id": "r1", "sequence": "GGCATT", "label": "(....)"}]"#;
    for f in ["bl_pb_train.json", "bl_pb_test.json", "bl_pb_valid.json"] {
        p.write(f, structures);
    }
    for f in [
        "ft_train.json",
        "ft_valid.json",
        "ft_test.json",
        "emb_data.json",
        "instruct.json",
    ] {
        p.write(f, labelled);
    }
    // Embedding tables as model.embed writes them: id, label, emb_0, emb_1.
    let vectors = r#"[{"id": "a", "label": "x", "emb_0": 0.1, "emb_1": 1.0}, {"id": "b", "label": "y", "emb_0": 0.9, "emb_1": -1.0}, {"id": "c", "label": "x", "emb_0": 0.2, "emb_1": 0.8}, {"id": "d", "label": "y", "emb_0": 0.7, "emb_1": -0.5}]"#;
    for f in [
        "probe_fit.json",
        "probe_test.json",
        "probe_pair_fit.json",
        "probe_pair_test.json",
        "project.json",
    ] {
        p.write(f, vectors);
    }
    p.write(
        "pairs.json",
        r#"[{"id": "g1", "dna": "ATGAAA", "protein": "MK"}, {"id": "g2", "dna": "ATGCCC", "protein": "MP"}]"#,
    );
    p.write(
        "keywords.json",
        r#"[{"id": "g1", "product": "Serine Kinase"}, {"id": "g2", "product": "Permease"}]"#,
    );
    p.write(
        "text.json",
        r#"[{"id": "a", "label": "DNA gyrase", "prediction": "DNA ligase"}, {"id": "b", "label": "kinase", "prediction": "kinase"}]"#,
    );
    let named = r#"[{"id": "a", "sequence": "MKKR", "label": "ribosomal protein"}, {"id": "b", "sequence": "MLLA", "label": "permease"}]"#;
    p.write("nearest_train.json", named)
        .write("nearest_test.json", named);
    p.write(
        "classify_by_pred.json",
        r#"[{"id": "a", "label": "x", "prediction": "x"}, {"id": "b", "label": "y", "prediction": "x"}]"#,
    );
    p.write(
        "classify_by.json",
        r#"[{"id": "a", "kind": "match"}, {"id": "b", "kind": "other"}]"#,
    );
    for f in [
        "tok_train.txt",
        "tok_eval.txt",
        "pre_train.txt",
        "pre_valid.txt",
        "lm_data.txt",
        "markov_train.txt",
        "markov_test.txt",
        "extend_train.txt",
        "extend_held.txt",
    ] {
        p.write(f, SEQS);
    }
    p.write(
        "instruct_tok/tokenizer_config.json",
        r#"{"chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}"#,
    );
    copy_dir(
        &Path::new(FIXTURES).join("tokenizers/llama/bytelevel"),
        &p.path("extend_base"),
    );
    std::fs::copy(
        Path::new(FIXTURES).join("tokenizers/bpe.json"),
        p.path("resize_tok.json"),
    )
    .unwrap();
    for f in [
        "tok_eval.json",
        "pre_tok.json",
        "lm_tok.json",
        "ft_tok.json",
        "emb_tok.json",
        "score_tok.json",
    ] {
        std::fs::copy(&char_tok, p.path(f)).unwrap();
    }
    // A model directory and an eval.markov metrics file, made by dnaflow itself.
    std::fs::copy(&char_tok, p.path("setup_tok.json")).unwrap();
    p.write(
        "setup.yaml",
        r#"
name: setup
steps:
  model:
    uses: model.pretrain
    with: { arch: gpt2, tokenizer: setup_tok.json, train: pre_train.txt, config: { n_embd: 8, n_layer: 1, n_head: 2 }, seq_len: 16, batch_size: 2, steps: 1 }
  markov:
    uses: eval.markov
    with: { train: markov_train.txt, test: markov_test.txt, order: 2 }
"#,
    );
    let setup = p.run_ok(&["setup.yaml"]);
    let model = setup.out("model").join("model");
    for dir in [
        "pre_init",
        "lm_model",
        "gen_model",
        "ft_init",
        "emb_model",
        "resize_model",
        "score_model",
    ] {
        copy_dir(&model, &p.path(dir));
    }
    std::fs::copy(
        setup.out("markov").join("metrics.json"),
        p.path("lm_baseline.json"),
    )
    .unwrap();
    p.write("wf.yaml", &format!("{WORKFLOW}{}", dependents()));
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Change `rel`'s bytes without making it unreadable to the kind.
fn edit(p: &Project, rel: &str) {
    let path = p.path(rel);
    if path.is_dir() {
        p.write(&format!("{rel}/NOTES.md"), &format!("edited {rel}\n"));
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = if rel.ends_with(".json") {
        // The same JSON, spelled differently: other bytes, same meaning.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    } else if rel.ends_with(".csv") {
        format!("{text}r9,GATTACAGATTACA\n")
    } else if rel.ends_with(".fa") {
        format!("{text}>c\nGATTACAGATTACA\n")
    } else {
        format!("{text}GATTACAGATTACA\n")
    };
    assert_ne!(text, edited, "the edit of {rel} changes its bytes");
    std::fs::write(&path, edited).unwrap();
}

#[test]
fn every_file_parameter_of_every_kind_is_covered_here() {
    // A new kind with a file parameter, or a new file parameter, needs a case above.
    for kind in KINDS {
        for pointer in input_pointers(kind) {
            let name = pointer_name(pointer);
            assert!(
                CASES.iter().any(|c| c.1 == kind.name && c.2 == name),
                "`{}` parameter `{name}` names files but no case edits one",
                kind.name
            );
        }
    }
}

#[test]
fn editing_a_literal_input_file_reruns_its_step_and_dependents() {
    let p = project();
    let first = p.run_ok(&["wf.yaml"]);
    assert!(first.with_status("cached").is_empty());
    let again = p.run_ok(&["wf.yaml"]);
    assert!(
        again.with_status("ran").is_empty(),
        "a no-op rerun ran steps"
    );
    for (step, kind, _, file) in CASES {
        edit(&p, file);
        let plan = p.dnaflow(&["plan", "wf.yaml"]);
        let plan_text = common::text(&plan);
        assert!(
            plan_text.contains(&format!("input `{file}` changed")),
            "plan names the edited input {file}:\n{plan_text}"
        );
        let r = p.run_ok(&["wf.yaml"]);
        assert_eq!(
            r.with_status("ran"),
            [format!("after_{step}"), step.to_string()],
            "editing {file} (read by `{kind}`) must rerun `{step}` and its dependent, nothing else"
        );
    }
}

/// Every literal string in a kind's parameters that names an existing file or directory must
/// be one of the step's hashed inputs. Checked over every shipped workflow and fixture.
#[test]
fn no_workflow_hands_a_kind_a_path_the_key_does_not_cover() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["workflows", "tests/fixtures"] {
        collect_yaml(&root.join(dir), &mut files);
    }
    let p = project();
    files.push(p.path("wf.yaml"));
    let mut checked = 0;
    for file in &files {
        let wf = dnaflow::workflow::load(file, &Default::default())
            .unwrap_or_else(|e| panic!("{} does not load:\n{e}", file.display()));
        for step in &wf.steps {
            let Action::Uses { kind, with } = &step.action else {
                continue;
            };
            let covered: BTreeSet<&str> = step.inputs.iter().map(|i| i.path.as_str()).collect();
            let mut literals = Vec::new();
            strings(with, "", &mut literals);
            for (name, s) in literals {
                if s.is_empty() || s == "." || covered.contains(s.as_str()) {
                    continue;
                }
                assert!(
                    !wf.workdir.join(&s).exists(),
                    "{}: step `{}` ({}) parameter `{name}` names `{s}`, which exists, but is not \
                     hashed into the key: give the parameter the type `InputPath`",
                    file.display(),
                    step.name,
                    kind.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no literal parameters were checked");
}

fn collect_yaml(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

/// Literal strings of a `with:` (references to other steps are covered by their keys).
fn strings(p: &Param, name: &str, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if name.is_empty() {
            k.to_string()
        } else {
            format!("{name}.{k}")
        }
    };
    match p {
        Param::Value(v) => json_strings(v, name, out),
        Param::Template(_) => {}
        Param::List(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &join(&i.to_string()), out);
            }
        }
        Param::Map(m) => {
            for (k, v) in m {
                strings(v, &join(k), out);
            }
        }
    }
}

fn json_strings(v: &serde_json::Value, name: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) => out.push((name.to_string(), s.clone())),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                json_strings(item, &format!("{name}.{i}"), out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, item) in m {
                json_strings(item, &format!("{name}.{k}"), out);
            }
        }
        _ => {}
    }
}
