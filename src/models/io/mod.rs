//! Tensors by their Hugging Face names: the one walk that declares a model's names
//! ([`vars`]), named host tensors with load bookkeeping ([`weights`]), and checkpoint files as
//! published ([`checkpoint`]), and LoRA adapters as PEFT saves them ([`adapter`]).

pub mod adapter;
pub mod checkpoint;
pub mod vars;
pub mod weights;
