//! `model.finetune` with `task: text`: a sequence as the prompt and a text as the answer (a
//! protein and its product name, chapter 3.4). Prompt and answer are one causal row,
//! `prompt <eos> answer <eos>`, and only the answer and its end are scored, so the model
//! learns to answer, not to write proteins. (The tutorial put a seq2seq collator on a
//! decoder-only model, which shifted the labels under the wrong positions.) Test rows are
//! answered from their prompt alone, greedily and by sampling, both stopping at `<eos>`.

use super::generate::{Continuation, Sampler};
use super::table::LocatedTable;
use super::vocab::{Vocab, decode, encode_spans};
use super::{StepContext, StepError};
use crate::models::arch::LmKind;
use crate::models::{FusedOps, Model};
use crate::train::{Row, Target};

/// How long prompts and answers may be, in tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lengths {
    /// The model's input, at most its positions.
    pub max_len: usize,
    /// The longest answer, its end-of-text included (`max_new_tokens`).
    pub max_new: usize,
}

impl Lengths {
    /// Tokens a prompt may have: what the input leaves after the separator and the answer.
    pub fn prompt(self) -> usize {
        self.max_len.saturating_sub(self.max_new + 1)
    }
}

/// The end-of-text token that separates and ends, or an error naming the tokenizer.
fn eos(vocab: &Vocab) -> Result<u32, StepError> {
    vocab.eos.ok_or_else(|| {
        StepError::new(format!(
            "{}: `task: text` needs an end-of-text token (`<|endoftext|>`, `</s>`) in the \
             tokenizer to separate the answer from the prompt and to end it",
            vocab.path.display()
        ))
    })
}

/// Each row as `prompt <eos> answer <eos>`, learning from the answer on. A prompt longer than
/// [`Lengths::prompt`] is an error naming its row, or with `truncate` keeps its first tokens;
/// an answer longer than `max_new_tokens` allows is an error naming its row.
pub(super) fn answer_rows(
    vocab: &Vocab,
    table: &LocatedTable,
    columns: (&str, &str),
    truncate: bool,
    lengths: Lengths,
) -> Result<Vec<Row>, StepError> {
    let (sequence, label) = columns;
    let end = eos(vocab)?;
    let prompts = table.texts(sequence, "sequence", "a prompt")?;
    let answers = table.texts(label, "label", "an answer text")?;
    let prompts = encode_spans(vocab, &prompts)?;
    let answers = encode_spans(vocab, &answers)?;
    let room = lengths.prompt();
    if room == 0 {
        return Err(StepError::new(format!(
            "`max_new_tokens` {} leaves no room for a prompt in the model's {} tokens; lower \
             it or use a model with more positions",
            lengths.max_new, lengths.max_len
        )));
    }
    let mut rows = Vec::with_capacity(prompts.len());
    for (i, ((mut prompt, _), (answer, _))) in prompts.into_iter().zip(answers).enumerate() {
        if prompt.ids.len() > room {
            if !truncate {
                return Err(StepError::new(format!(
                    "{}: the prompt is {} tokens, longer than the {room} that the model's {} \
                     positions leave after the separator and `max_new_tokens` {}; set \
                     `truncate: true` to keep its first {room} tokens, lower \
                     `max_new_tokens`, or use a model with more positions",
                    table.at(i, sequence),
                    prompt.ids.len(),
                    lengths.max_len,
                    lengths.max_new
                )));
            }
            prompt.ids.truncate(room);
            prompt.bases.truncate(room);
        }
        if answer.ids.len() + 1 > lengths.max_new {
            return Err(StepError::new(format!(
                "{}: the answer is {} tokens plus its end, more than `max_new_tokens` {}; \
                 raise `max_new_tokens`",
                table.at(i, label),
                answer.ids.len(),
                lengths.max_new
            )));
        }
        let mut row = Row {
            ids: prompt.ids,
            bases: prompt.bases,
            ..Row::default()
        };
        row.ids.push(end);
        row.bases.push(0);
        row.target = Target::Answer(row.ids.len());
        row.ids.extend_from_slice(&answer.ids);
        row.bases.extend_from_slice(&answer.bases);
        row.ids.push(end);
        row.bases.push(0);
        rows.push(row);
    }
    Ok(rows)
}

/// One test row's answers.
#[derive(Debug, Clone, Default)]
pub(super) struct Answer {
    /// Greedy decoding.
    pub greedy: String,
    /// Sampled decoding.
    pub sampled: String,
    /// Whether greedy decoding ended at `<eos>` (not at `max_new_tokens`).
    pub ended: bool,
}

/// How test rows are answered: besides greedily, by `sampler`, seeded by `seed` so a rerun
/// writes the same text.
pub(super) struct Decoding {
    pub lengths: Lengths,
    pub sampler: Sampler,
    pub seed: u64,
}

/// Answer every row from its prompt (the tokens before its answer), greedily and sampled.
pub(super) fn answer<B: FusedOps>(
    ctx: &StepContext,
    model: &Model<B>,
    vocab: &Vocab,
    rows: &[Row],
    decoding: &Decoding,
    device: &B::Device,
) -> Result<Vec<Answer>, StepError> {
    let Decoding {
        lengths,
        ref sampler,
        seed,
    } = *decoding;
    use rand::SeedableRng;
    if model.spec().config.architecture().lm != LmKind::Causal {
        return Err(StepError::new(
            "`task: text` generates its answers with a causal model",
        ));
    }
    let end = eos(vocab)?;
    let run = Continuation {
        max_new: lengths.max_new,
        window: lengths.max_len,
        stop: Some(end),
        pad: vocab.pad,
        cancelled: ctx.cancelled,
    };
    let greedy = Sampler {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut prompts = Vec::with_capacity(rows.len());
    for row in rows {
        let Target::Answer(from) = row.target else {
            return Err(StepError::new("a text row without its answer's start"));
        };
        prompts.push(&row.ids[..from]);
    }
    // Prompts of one length are answered together, up to 64 at a time (a batch needs equal
    // lengths: no padding inside a causal prompt); greedy answers are the same as one by one.
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut found: Vec<Option<Answer>> = vec![None; rows.len()];
    for (len, group) in by_len {
        for chunk in group.chunks(64) {
            let mut text = |s: &Sampler| -> Result<Vec<(String, bool)>, StepError> {
                let mut batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].to_vec()).collect();
                run.extend(model, &mut batch, s, &mut rng, device);
                batch
                    .into_iter()
                    .map(|row| {
                        let mut new = row[len..].to_vec();
                        let ended = match new.iter().position(|&t| t == end) {
                            Some(at) => {
                                new.truncate(at);
                                true
                            }
                            None => false,
                        };
                        Ok((decode(vocab, &new)?.trim().to_string(), ended))
                    })
                    .collect()
            };
            let greedy = text(&greedy)?;
            let sampled = text(sampler)?;
            for ((&i, (greedy, ended)), (sampled, _)) in chunk.iter().zip(greedy).zip(sampled) {
                found[i] = Some(Answer {
                    greedy,
                    sampled,
                    ended,
                });
            }
        }
    }
    let out: Vec<Answer> = found
        .into_iter()
        .map(|a| a.expect("every row answered"))
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use super::super::model::load_vocab;
    use super::super::table::read_role;

    #[test]
    fn prompt_and_answer_make_one_row_scored_on_the_answer() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        let vocab = load_vocab(&fixture.join("bpe.json")).unwrap();
        let end = vocab.eos.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(
            &csv,
            "id,sequence,label\na,ACGTACGT,CC\nb,ACGTACGTACGTACGTACGTACGTACGTACGT,GG\n",
        )
        .unwrap();
        let table = read_role(&csv, "id", "test").unwrap();
        let lengths = Lengths {
            max_len: 64,
            max_new: 8,
        };
        let rows = answer_rows(&vocab, &table, ("sequence", "label"), false, lengths).unwrap();
        let prompt = vocab.tokenizer.encode("ACGTACGT", false).unwrap();
        let answer = vocab.tokenizer.encode("CC", false).unwrap();
        let n = prompt.len();
        assert_eq!(&rows[0].ids[..n], prompt.get_ids());
        assert_eq!(rows[0].ids[n], end);
        assert_eq!(&rows[0].ids[n + 1..rows[0].ids.len() - 1], answer.get_ids());
        assert_eq!(*rows[0].ids.last().unwrap(), end);
        assert_eq!(rows[0].target, Target::Answer(n + 1));

        // A prompt past its room: an error naming the row, or its first tokens kept.
        let long = vocab
            .tokenizer
            .encode("ACGTACGTACGTACGTACGTACGTACGTACGT", false)
            .unwrap()
            .len();
        let tight = Lengths {
            max_len: long + 8,
            max_new: 8,
        };
        let e = answer_rows(&vocab, &table, ("sequence", "label"), false, tight).unwrap_err();
        assert!(e.message.contains("id `b`"), "{}", e.message);
        assert!(e.message.contains("the prompt is"), "{}", e.message);
        let cut = answer_rows(&vocab, &table, ("sequence", "label"), true, tight).unwrap();
        assert_eq!(cut[1].target, Target::Answer(tight.prompt() + 1));

        // An answer longer than max_new_tokens allows names its row.
        let short = Lengths {
            max_len: 64,
            max_new: 1,
        };
        let e = answer_rows(&vocab, &table, ("sequence", "label"), false, short).unwrap_err();
        assert!(e.message.contains("id `a`"), "{}", e.message);
        assert!(
            e.message.contains("raise `max_new_tokens`"),
            "{}",
            e.message
        );
    }
}
