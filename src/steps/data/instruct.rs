//! `data.instruct`: instruction rows from a labelled table by a rule written in the workflow
//! (chapter 4.5): each row's sequence becomes the input of one instruction, rendered with the
//! Alpaca template or with a tokenizer's own chat template (Jinja, rendered as transformers
//! renders `apply_chat_template(..., add_generation_prompt=True)`), and its label becomes the
//! answer the rule names for it. `model.finetune` with `task: text` then learns the answers
//! (loss on the answer only, ending at end-of-text) and `eval.text` with `choices: true`
//! scores them as classes.

use indexmap::IndexMap;
use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{column_as_strings, params_of, resolve, row_id, text_column};
use crate::steps::table::{TABLE_FILE, TableMeta, read_table, write_table_with};
use crate::steps::{InputPath, StepContext, StepError, StepKind, params, write_metrics};

/// How a prompt is written around the instruction and its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Template {
    /// Stanford Alpaca's: `### Instruction:` / `### Input:` / `### Response:`.
    Alpaca,
    /// The `chat_template` of `tokenizer`'s `tokenizer_config.json`, one user message
    /// (instruction, a blank line, the input), with the generation prompt.
    Chat,
}

/// Parameters of `data.instruct`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InstructParams {
    /// The labelled table.
    input: InputPath,
    /// The task's name, written in a `task` column (so scores can be read per task).
    task: String,
    /// What the model is asked to do.
    instruction: String,
    /// Each label of the table and the answer it stands for, e.g. `{EI: exon-intron, IE:
    /// intron-exon, N: neither}`; a label the rule does not name is an error naming its row.
    answers: IndexMap<String, String>,
    /// `alpaca` (default) or `chat` (needs `tokenizer`).
    #[serde(default = "alpaca")]
    template: Template,
    /// The tokenizer whose `chat_template` renders the prompts (`template: chat`).
    tokenizer: Option<InputPath>,
    /// Keep at most this many characters of each sequence (its start), so the template's end
    /// always fits (0: all).
    #[serde(default)]
    max_input: usize,
    /// Column holding the sequences the instructions ask about.
    #[serde(default = "crate::steps::tokenizer::sequence")]
    column: String,
    /// Column holding the labels the answers stand for.
    #[serde(default = "crate::steps::table::label_column")]
    label: String,
}

fn alpaca() -> Template {
    Template::Alpaca
}

/// The `data.instruct` kind.
pub static KIND: StepKind = StepKind {
    name: "data.instruct",
    version: 2,
    summary: "instruction rows from a labelled table: prompt (Alpaca or the tokenizer's chat template) and the answer each label stands for (output `table`: id, sequence = prompt, label = answer, task, class, and the table's other columns)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<InstructParams>(),
    check: |with| params::<InstructParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &InstructParams) -> Result<(), String> {
    if p.answers.is_empty() {
        return Err("`answers` is empty: give each label the answer it stands for".into());
    }
    if let Some((label, _)) = p.answers.iter().find(|(_, a)| a.trim().is_empty()) {
        return Err(format!("label `{label}` has an empty answer"));
    }
    if p.template == Template::Chat && p.tokenizer.is_none() {
        return Err(
            "`template: chat` renders the tokenizer's chat template: set `tokenizer`".into(),
        );
    }
    Ok(())
}

/// Stanford Alpaca's prompt with an input.
fn alpaca_prompt(instruction: &str, input: &str) -> String {
    format!(
        "Below is an instruction that describes a task, paired with an input that provides \
         further context. Write a response that appropriately completes the request.\n\n\
         ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
}

/// A tokenizer's chat template, ready to render one user message as transformers does.
struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

/// The text of a special token in `tokenizer_config.json` (a string, or `{content: …}`).
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

impl ChatTemplate {
    /// The `chat_template` of the `tokenizer_config.json` beside `tokenizer` (or in it, a
    /// directory); an absent or unparsable template is an error naming the file.
    fn load(tokenizer: &std::path::Path) -> Result<ChatTemplate, StepError> {
        let dir = if tokenizer.is_dir() {
            tokenizer.to_path_buf()
        } else {
            tokenizer
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf()
        };
        let path = dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StepError::new(format!("{}: not JSON: {e}", path.display())))?;
        // transformers 5 may keep the template in `chat_template.jinja` beside the config.
        let template = match v.get("chat_template").and_then(|t| t.as_str()) {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(dir.join("chat_template.jinja")).map_err(|_| {
                StepError::new(format!(
                    "{}: no `chat_template` (and no chat_template.jinja beside it); use \
                     `template: alpaca`, or a tokenizer that has one",
                    path.display()
                ))
            })?,
        };
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", template).map_err(|e| {
            StepError::new(format!(
                "{}: the chat template does not parse: {e}",
                path.display()
            ))
        })?;
        Ok(ChatTemplate {
            env,
            bos: token_text(v.get("bos_token")),
            eos: token_text(v.get("eos_token")),
        })
    }

    /// One user message rendered with the generation prompt.
    fn render(&self, content: &str) -> Result<String, minijinja::Error> {
        self.env.get_template("chat")?.render(minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => content }],
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
    }
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: InstructParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let df = read_table(&path)?;
    let seqs = text_column(&df, &p.column, &path, "column")?;
    let labels = column_as_strings(&df, &p.label, &path, "label")?;
    let chat = match (&p.template, &p.tokenizer) {
        (Template::Chat, Some(t)) => Some(ChatTemplate::load(&resolve(ctx, t))?),
        _ => None,
    };
    let n = df.height();
    let (mut ids, mut prompts, mut answers, mut classes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut cut = 0usize;
    for (i, (seq, label)) in seqs.iter().zip(&labels).enumerate() {
        let id = row_id(&df, i);
        let seq = seq.unwrap_or("");
        let label = label.as_str();
        let Some(answer) = p.answers.get(label) else {
            return Err(StepError::new(format!(
                "{}: row {id} has label `{label}`, which `answers` does not name (it names {}); \
                 add it to `answers` or filter the row out",
                path.display(),
                p.answers
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let input: String = if p.max_input > 0 && seq.chars().count() > p.max_input {
            cut += 1;
            seq.chars().take(p.max_input).collect()
        } else {
            seq.to_string()
        };
        let prompt = match &chat {
            Some(c) => c
                .render(&format!("{}\n\n{input}", p.instruction))
                .map_err(|e| {
                    StepError::new(format!(
                        "row {id}: the chat template of `tokenizer` does not render: {e}"
                    ))
                })?,
            None => alpaca_prompt(&p.instruction, &input),
        };
        ids.push(id);
        prompts.push(prompt);
        answers.push(answer.clone());
        classes.push(label.to_string());
    }
    // The table's other columns stay (a `split` column splits the instructions as it split
    // the rows); the prompt and answer take the sequence's and label's places.
    let mut out = df.clone();
    for name in [
        "id",
        "sequence",
        "label",
        "task",
        "class",
        p.column.as_str(),
        p.label.as_str(),
    ] {
        if out.column(name).is_ok() {
            out.drop_in_place(name)?;
        }
    }
    let tasks = vec![p.task.clone(); n];
    for c in [
        Column::new("id".into(), ids),
        Column::new("sequence".into(), prompts),
        Column::new("label".into(), answers),
        Column::new("task".into(), tasks),
        Column::new("class".into(), classes),
    ] {
        out.with_column(c)?;
    }
    write_table_with(&mut out, &ctx.out.join(TABLE_FILE), &meta)?;
    writeln!(
        ctx.log,
        "{n} instructions for `{}` ({:?} template); {cut} inputs cut to {} characters",
        p.task, p.template, p.max_input
    )?;
    write_metrics(
        ctx.out,
        &serde_json::json!({ "rows": n, "inputs_cut": cut, "answers": p.answers.len() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LLaMA-2 style template with Python string methods and `raise_exception` renders as
    /// transformers renders it.
    #[test]
    fn chat_templates_render_as_transformers_does() {
        let dir = tempfile::tempdir().unwrap();
        let template = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] \
                        {{ m['content'].strip() }} [/INST]{% else %}{{ raise_exception('only user') }}\
                        {% endif %}{% endfor %}";
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::json!({"chat_template": template, "bos_token": "<s>", "eos_token": {"content": "</s>"}})
                .to_string(),
        )
        .unwrap();
        let chat = ChatTemplate::load(dir.path()).unwrap();
        assert_eq!(
            chat.render("  Is this a promoter?\n\nACGT ").unwrap(),
            "<s>[INST] Is this a promoter?\n\nACGT [/INST]"
        );
        assert_eq!(chat.eos, "</s>");
    }

    /// A template that raises (as LLaMA-2's does for a conversation it does not accept) is
    /// an error with the template's message; one that does not parse is refused on loading.
    #[test]
    fn a_template_that_does_not_render_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let write = |t: &str| {
            std::fs::write(
                dir.path().join("tokenizer_config.json"),
                serde_json::json!({ "chat_template": t }).to_string(),
            )
            .unwrap()
        };
        write("{{ raise_exception('Conversation roles must alternate') }}");
        let err = ChatTemplate::load(dir.path())
            .unwrap()
            .render("x")
            .unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
        write("{% for m in messages %}");
        let err = ChatTemplate::load(dir.path()).err().unwrap().message;
        assert!(err.contains("does not parse"), "{err}");
    }

    #[test]
    fn alpaca_prompts_end_with_the_response_header() {
        let p = alpaca_prompt("Classify.", "ACGT");
        assert!(p.contains("### Instruction:\nClassify.\n\n### Input:\nACGT\n\n"));
        assert!(p.ends_with("### Response:\n"));
    }
}
