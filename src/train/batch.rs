//! From tokenized sequences to batches: packing for causal LM, dynamic padding and 15 %
//! masking for masked LM. Every choice is a pure function of (seed, batch index), so a resumed
//! run sees exactly the batches an uninterrupted one would.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Label value of positions that carry no loss (PyTorch's ignore_index).
pub const IGNORE: i64 = -100;

/// One training row: token ids, how many bases each token spells, and what it should predict
/// when that is not the tokens themselves.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub ids: Vec<u32>,
    pub bases: Vec<u16>,
    pub target: Target,
    /// First token of a pair's second sequence: BERT's token type 1 from there on (0: one
    /// sequence, every token type 0).
    pub second: usize,
    /// Token type of every position before `second` (0 unless the model reads kinds of
    /// sequence apart: LucaOne's 1 for protein).
    pub token_type: u32,
}

/// The label of a row for a task head.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Target {
    /// None: a language model learns the tokens.
    #[default]
    None,
    /// A class index (sequence classification).
    Class(u32),
    /// A number (regression).
    Value(f32),
    /// A class index per token, or [`IGNORE`] (token classification).
    Tokens(Vec<i64>),
    /// Whether the row has each label (multi-label classification).
    Labels(Vec<bool>),
    /// A causal LM learns only the tokens from this index on: the answer after its prompt
    /// (the prompt is read, never scored).
    Answer(usize),
}

/// A batch on the host, row-major [b, t].
#[derive(Debug, Clone)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub ids: Vec<i64>,
    pub types: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<i64>,
    /// Target id per position (language models, token heads) or per row (sequence heads), or
    /// [`IGNORE`].
    pub labels: Vec<i64>,
    /// Regression targets, one per row; multi-label targets, one 0/1 per row and label
    /// (row-major).
    pub values: Vec<f32>,
    /// Positions with a label.
    pub labelled: usize,
    /// Bases spelled by the labelled tokens (for bits per base).
    pub label_bases: u64,
    /// Real (non-padding) tokens.
    pub tokens: usize,
    /// Per row: its labelled positions and the bases they spell (what [`Batch::shard`] needs
    /// to count a shard's `labelled` and `label_bases`).
    pub row_labels: Vec<(usize, u64)>,
}

impl Batch {
    /// Rank `rank`'s contiguous share of the rows (of `ranks`), padded as the whole batch is,
    /// so the ranks' summed losses equal the whole batch's. A share may be empty.
    pub fn shard(&self, rank: usize, ranks: usize) -> Batch {
        let (lo, hi) = (self.b * rank / ranks, self.b * (rank + 1) / ranks);
        let per_row = |v: usize| v.checked_div(self.b).unwrap_or(0);
        let cut = |len: usize| (lo * per_row(len), hi * per_row(len));
        let take_i64 = |v: &[i64]| {
            let (a, z) = cut(v.len());
            v[a..z].to_vec()
        };
        let (va, vz) = cut(self.values.len());
        let mask = take_i64(&self.mask);
        let row_labels = self.row_labels.get(lo..hi).unwrap_or_default().to_vec();
        Batch {
            b: hi - lo,
            t: self.t,
            ids: take_i64(&self.ids),
            types: take_i64(&self.types),
            labels: take_i64(&self.labels),
            values: self.values[va..vz].to_vec(),
            labelled: row_labels.iter().map(|r| r.0).sum(),
            label_bases: row_labels.iter().map(|r| r.1).sum(),
            tokens: mask.iter().filter(|&&m| m == 1).count(),
            mask,
            row_labels,
        }
    }

    /// Count one labelled position of row `i` spelling `bases` bases.
    fn label(&mut self, i: usize, bases: u64) {
        self.labelled += 1;
        self.label_bases += bases;
        self.row_labels[i].0 += 1;
        self.row_labels[i].1 += bases;
    }
}

/// Causal-LM rows: documents joined with `eos` between them and cut into `seq_len` pieces
/// (GPT-2's packing; no padding at all). The tail shorter than 2 tokens is dropped.
pub fn pack(docs: &[Row], seq_len: usize, eos: Option<u32>) -> Vec<Row> {
    pack_tracked(docs, seq_len, eos, false).0
}

/// [`pack`], and per row the document (index into `docs`) each of its tokens comes from; an
/// `eos` belongs to the document it ends. Scores per held-out sequence (bootstrap intervals)
/// sum each token's loss into its document.
pub fn pack_with_owners(docs: &[Row], seq_len: usize, eos: Option<u32>) -> (Vec<Row>, Owners) {
    pack_tracked(docs, seq_len, eos, true)
}

/// Per row, per token: the index of the document the token comes from.
pub type Owners = Vec<Vec<u32>>;

fn pack_tracked(docs: &[Row], seq_len: usize, eos: Option<u32>, track: bool) -> (Vec<Row>, Owners) {
    let mut rows = Vec::new();
    let mut owners = Vec::new();
    let mut cur = Row::default();
    let mut cur_owners = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let tokens = doc.ids.iter().zip(&doc.bases).map(|(&id, &b)| (id, b));
        for (id, bases) in tokens.chain(eos.map(|e| (e, 0))) {
            cur.ids.push(id);
            cur.bases.push(bases);
            if track {
                cur_owners.push(d as u32);
            }
            if cur.ids.len() == seq_len {
                rows.push(std::mem::take(&mut cur));
                owners.push(std::mem::take(&mut cur_owners));
            }
        }
    }
    if cur.ids.len() >= 2 {
        rows.push(cur);
        owners.push(cur_owners);
    }
    if !track {
        owners.clear();
    }
    (rows, owners)
}

/// Masked-LM rows: `[CLS] doc [SEP]`, documents longer than `max_len` split into pieces.
pub fn frame(docs: &[Row], max_len: usize, cls: u32, sep: u32) -> Vec<Row> {
    frame_with_owners(docs, max_len, cls, sep).0
}

/// [`frame`], and per row the document each token comes from (`[CLS]` and `[SEP]` included).
pub fn frame_with_owners(docs: &[Row], max_len: usize, cls: u32, sep: u32) -> (Vec<Row>, Owners) {
    let body = max_len.saturating_sub(2).max(1);
    let mut rows = Vec::new();
    let mut owners = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for (ids, bases) in doc.ids.chunks(body).zip(doc.bases.chunks(body)) {
            let mut row = Row {
                ids: Vec::with_capacity(ids.len() + 2),
                bases: Vec::with_capacity(ids.len() + 2),
                target: Target::None,
                second: 0,
                token_type: doc.token_type,
            };
            row.ids.push(cls);
            row.bases.push(0);
            row.ids.extend_from_slice(ids);
            row.bases.extend_from_slice(bases);
            row.ids.push(sep);
            row.bases.push(0);
            owners.push(vec![d as u32; row.ids.len()]);
            rows.push(row);
        }
    }
    (rows, owners)
}

/// The order rows are visited in: a fresh seeded permutation per epoch.
#[derive(Debug, Clone)]
pub struct Order {
    rows: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    epoch: Option<(usize, Vec<usize>)>,
}

impl Order {
    pub fn new(rows: usize, batch_size: usize, seed: u64, shuffle: bool) -> Order {
        Order {
            rows,
            batch_size,
            seed,
            shuffle,
            epoch: None,
        }
    }

    /// Batches in one pass over the rows (the last may be short).
    pub fn batches_per_epoch(&self) -> usize {
        self.rows.div_ceil(self.batch_size).max(1)
    }

    /// Row indices of global batch number `index`.
    pub fn batch(&mut self, index: usize) -> Vec<usize> {
        let per = self.batches_per_epoch();
        let (epoch, within) = (index / per, index % per);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..self.rows).collect();
            if self.shuffle {
                perm.shuffle(&mut StdRng::seed_from_u64(
                    self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
                ));
            }
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        let start = within * self.batch_size;
        perm[start..(start + self.batch_size).min(self.rows)].to_vec()
    }
}

fn padded(rows: &[&Row], pad: u32) -> Batch {
    let b = rows.len();
    let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
    let mut batch = Batch {
        b,
        t,
        ids: vec![pad as i64; b * t],
        types: vec![0; b * t],
        mask: vec![0; b * t],
        labels: vec![IGNORE; b * t],
        values: Vec::new(),
        labelled: 0,
        label_bases: 0,
        tokens: 0,
        row_labels: vec![(0, 0); b],
    };
    for (i, r) in rows.iter().enumerate() {
        for (j, &id) in r.ids.iter().enumerate() {
            batch.ids[i * t + j] = id as i64;
            batch.mask[i * t + j] = 1;
            batch.types[i * t + j] = if r.second > 0 && j >= r.second {
                1
            } else {
                r.token_type as i64
            };
        }
        batch.tokens += r.ids.len();
    }
    batch
}

/// Causal-LM batch: position j predicts token j+1 of the same row (only the answer's tokens,
/// for a row with a [`Target::Answer`]).
pub fn clm_batch(rows: &[&Row], pad: u32) -> Batch {
    let mut batch = padded(rows, pad);
    let t = batch.t;
    for (i, r) in rows.iter().enumerate() {
        let from = match r.target {
            Target::Answer(from) => from.max(1) - 1,
            _ => 0,
        };
        for j in from..r.ids.len().saturating_sub(1) {
            batch.labels[i * t + j] = r.ids[j + 1] as i64;
            batch.label(i, r.bases[j + 1] as u64);
        }
    }
    batch
}

/// A batch for a task head: rows padded to the longest, labelled by their [`Target`]: one
/// label (or value) per row for a sequence head, one per token for a token head.
pub fn task_batch(rows: &[&Row], pad: u32) -> Batch {
    let mut batch = padded(rows, pad);
    let t = batch.t;
    match rows.first().map(|r| &r.target) {
        Some(Target::Class(_)) | Some(Target::Value(_)) | Some(Target::Labels(_)) => {
            batch.labels = vec![IGNORE; rows.len()];
            batch.values = vec![0.0; rows.len()];
            if let Some(Target::Labels(first)) = rows.first().map(|r| &r.target) {
                batch.values = vec![0.0; rows.len() * first.len()];
            }
            for (i, r) in rows.iter().enumerate() {
                match &r.target {
                    Target::Class(c) => batch.labels[i] = *c as i64,
                    Target::Value(v) => batch.values[i] = *v,
                    Target::Labels(has) => {
                        batch.labels[i] = 0; // labelled; the labels are in `values`
                        let k = has.len();
                        for (j, &h) in has.iter().enumerate() {
                            batch.values[i * k + j] = h as u8 as f32;
                        }
                    }
                    _ => continue,
                }
                batch.label(i, r.bases.iter().map(|&b| b as u64).sum::<u64>());
            }
        }
        _ => {
            for (i, r) in rows.iter().enumerate() {
                if let Target::Tokens(labels) = &r.target {
                    for (j, &l) in labels.iter().enumerate().take(t) {
                        batch.labels[i * t + j] = l;
                        if l != IGNORE {
                            batch.label(i, r.bases[j] as u64);
                        }
                    }
                }
            }
        }
    }
    batch
}

/// What masked-LM corruption draws from.
#[derive(Debug, Clone)]
pub struct Masking {
    pub probability: f64,
    pub mask_id: u32,
    /// Ids never masked (CLS, SEP, PAD, …).
    pub special: Vec<u32>,
    pub vocab_size: usize,
}

/// Masked-LM batch: `probability` of the real tokens get a label; of those 80 % become
/// `[MASK]`, 10 % a random token, 10 % stay (BERT's recipe, as DataCollatorForLanguageModeling).
/// At least one token per row is chosen so every row counts.
pub fn mlm_batch(rows: &[&Row], pad: u32, masking: &Masking, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut batch = padded(rows, pad);
    let t = batch.t;
    for (i, r) in rows.iter().enumerate() {
        let candidates: Vec<usize> = (0..r.ids.len())
            .filter(|&j| !masking.special.contains(&r.ids[j]))
            .collect();
        let mut chosen: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|_| rng.random_bool(masking.probability))
            .collect();
        if chosen.is_empty() && !candidates.is_empty() {
            chosen.push(candidates[rng.random_range(0..candidates.len())]);
        }
        for j in chosen {
            let at = i * t + j;
            batch.labels[at] = r.ids[j] as i64;
            batch.label(i, r.bases[j] as u64);
            let roll: f64 = rng.random();
            if roll < 0.8 {
                batch.ids[at] = masking.mask_id as i64;
            } else if roll < 0.9 {
                batch.ids[at] = rng.random_range(0..masking.vocab_size) as i64;
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ids: &[u32]) -> Row {
        Row {
            ids: ids.to_vec(),
            bases: vec![3; ids.len()],
            target: Target::None,
            second: 0,
            token_type: 0,
        }
    }

    #[test]
    fn an_answer_row_scores_only_its_answer() {
        // prompt 5 6, separator 0, answer 7 8, end 0: positions 2.. predict 7, 8, 0.
        let mut a = row(&[5, 6, 0, 7, 8, 0]);
        a.target = Target::Answer(3);
        let b = row(&[9, 4]);
        let batch = clm_batch(&[&a, &b], 1);
        assert_eq!(
            batch.labels,
            vec![
                IGNORE, IGNORE, 7, 8, 0, IGNORE, 4, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE
            ]
        );
        assert_eq!(batch.labelled, 4);
        assert_eq!(batch.label_bases, 12);
    }

    #[test]
    fn task_batches_label_rows_or_tokens() {
        let mut a = row(&[5, 6, 7]);
        let mut b = row(&[8]);
        a.target = Target::Class(2);
        b.target = Target::Class(0);
        let batch = task_batch(&[&a, &b], 0);
        assert_eq!((batch.b, batch.t), (2, 3));
        assert_eq!(batch.labels, vec![2, 0]);
        assert_eq!(batch.ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(batch.mask, vec![1, 1, 1, 1, 0, 0]);
        a.target = Target::Value(-2.5);
        b.target = Target::Value(1.0);
        assert_eq!(task_batch(&[&a, &b], 0).values, vec![-2.5, 1.0]);
        a.target = Target::Tokens(vec![1, IGNORE, 0]);
        b.target = Target::Tokens(vec![2]);
        let batch = task_batch(&[&a, &b], 0);
        assert_eq!(batch.labels, vec![1, IGNORE, 0, 2, IGNORE, IGNORE]);
        assert_eq!(batch.labelled, 3);
    }

    #[test]
    fn packing_joins_documents_with_eos_and_never_pads() {
        let rows = pack(&[row(&[5, 6, 7]), row(&[8, 9])], 3, Some(1));
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        assert_eq!(ids, vec![vec![5, 6, 7], vec![1, 8, 9]]);
        // The trailing eos alone is dropped.
        let b = clm_batch(&rows.iter().collect::<Vec<_>>(), 0);
        assert_eq!(b.labels[..3], [6, 7, IGNORE]);
        assert_eq!(b.labelled, 4);
        assert_eq!(b.label_bases, 3 + 3 + 3 + 3);
        // Each token's document: an eos belongs to the one it ends.
        let docs = [row(&[5, 6, 7]), row(&[8, 9])];
        let (same, owners) = pack_with_owners(&docs, 3, Some(1));
        assert_eq!(same.len(), rows.len());
        assert_eq!(owners, vec![vec![0, 0, 0], vec![0, 1, 1]]);
        let (framed, owners) = frame_with_owners(&docs, 4, 2, 3);
        assert_eq!(framed.len(), 3); // [CLS] 5 6 [SEP], [CLS] 7 [SEP], [CLS] 8 9 [SEP]
        assert_eq!(owners, vec![vec![0; 4], vec![0; 3], vec![1; 4]]);
    }

    #[test]
    fn mlm_pads_to_the_longest_row_and_masks_only_real_tokens() {
        let docs = [row(&[5; 40]), row(&[6; 10])];
        let rows = frame(&docs, 64, 2, 3);
        let masking = Masking {
            probability: 0.15,
            mask_id: 4,
            special: vec![0, 1, 2, 3, 4],
            vocab_size: 16,
        };
        let b = mlm_batch(&rows.iter().collect::<Vec<_>>(), 0, &masking, 1);
        assert_eq!(b.t, 42);
        assert_eq!(b.tokens, 42 + 12);
        for (k, &l) in b.labels.iter().enumerate() {
            if l != IGNORE {
                assert!(b.mask[k] == 1 && l != 2 && l != 3);
            }
        }
        assert!(b.labelled >= 2);
        let again = mlm_batch(&rows.iter().collect::<Vec<_>>(), 0, &masking, 1);
        assert_eq!(again.ids, b.ids, "masking is a function of the seed");
    }

    #[test]
    fn order_is_a_function_of_the_batch_index() {
        let mut a = Order::new(10, 3, 7, true);
        let mut b = Order::new(10, 3, 7, true);
        assert_eq!(a.batches_per_epoch(), 4);
        let seq: Vec<Vec<usize>> = (0..8).map(|i| a.batch(i)).collect();
        assert_eq!(b.batch(5), seq[5]);
        let mut epoch0: Vec<usize> = seq[..4].concat();
        epoch0.sort();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        assert_ne!(
            seq[..4].concat(),
            seq[4..].concat(),
            "each epoch reshuffles"
        );
    }
}
