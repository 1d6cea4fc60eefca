//! Published model shapes too large to ship as weights (BioMedGPT-LM-7B, LLaMA-gene 7B) read
//! through the LLaMA row at their exact sizes: the parameters their declared tensors hold
//! equal the published counts.

use super::*;
use crate::models::arch::{ArchConfig, read_config};

/// Parameters a LLaMA config declares: embeddings, per layer q/k/v/o, the SwiGLU MLP and two
/// RMSNorms, the final norm, and the LM head unless tied.
fn llama_parameters(c: &crate::models::arch::llama::LlamaConfig) -> u64 {
    let (d, inner, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (h, kv, dh) = (
        c.num_attention_heads as u64,
        c.kv_heads() as u64,
        c.head_dim() as u64,
    );
    let attention = d * h * dh * 2 + d * kv * dh * 2;
    let layer = attention + 3 * d * inner + 2 * d;
    let head = if c.tie_word_embeddings { 0 } else { v * d };
    v * d + c.num_hidden_layers as u64 * layer + d + head
}

#[test]
fn published_llama_shapes_read_through_the_llama_row() {
    for (name, vocab, positions, eps, parameters) in [
        ("biomedgpt-lm-7b", 32_000, 4096, 1e-5, 6_738_415_616u64),
        ("llama-gene-7b", 91_643, 2048, 1e-6, 7_227_011_072),
    ] {
        let (config, _) = read_config(&fixture("shapes").join(name)).unwrap();
        let ArchConfig::Llama(c) = &config else {
            panic!("{name}: read as {}, not llama", config.name());
        };
        assert_eq!(config.vocab_size(), vocab, "{name}");
        assert_eq!(config.max_positions(), positions, "{name}");
        assert_eq!(config.num_layers(), 32, "{name}");
        assert_eq!(c.kv_heads(), 32, "{name}: no grouped-query attention");
        assert_eq!(c.rms_norm_eps, eps, "{name}");
        assert!(!c.tie_word_embeddings, "{name}: untied LM head");
        c.check().unwrap();
        assert_eq!(llama_parameters(c), parameters, "{name}");
    }
}
