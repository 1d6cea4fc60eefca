//! dnaflow: run the DNAGPT2 tutorial chapters as cached, declarative YAML workflows.
//!
//! Layers, top to bottom: [`cli`] → [`workflow`] → [`graph`] → [`cache`] → [`exec`] → [`steps`];
//! [`report`] reads run records from the [`cache`] beside them;
//! below the steps, the libraries they call: [`train`], [`models`], [`score`], [`linear`];
//! under all of them, [`pages`]: how dnaflow's processes get memory.

pub mod cache;
pub mod cli;
pub mod diag;
pub mod exec;
pub mod graph;
/// Linear models on f64 vectors (L2 logistic regression, ridge) as scikit-learn fits them.
pub mod linear;
pub mod metrics;
pub mod models;
pub mod pages;
/// A run as a self-contained HTML page (`dnaflow report`), and live over HTTP (`dnaflow serve`).
pub mod report;
/// Scores of predictions (classification, regression, bootstrap intervals) as sklearn/SciPy define them.
pub mod score;
pub mod steps;
pub mod train;
pub mod workflow;
