//! Live progress: bars on a terminal, one plain line per event otherwise, or nothing.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cache::runs::StepStatus;

/// How much the run prints while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Nothing but errors.
    Quiet,
    /// One line per finished step (logs, CI).
    Plain,
    /// Spinners for running steps and an overall bar.
    Live,
}

/// Progress reporter for one run.
pub struct Progress {
    mode: OutputMode,
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    running: std::collections::HashMap<usize, ProgressBar>,
}

impl Progress {
    pub fn new(mode: OutputMode, steps: usize) -> Progress {
        let (multi, total) = if mode == OutputMode::Live {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let bar = multi.add(ProgressBar::new(steps as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} steps  {elapsed}  {msg}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            (Some(multi), Some(bar))
        } else {
            (None, None)
        };
        Progress {
            mode,
            multi,
            total,
            running: Default::default(),
        }
    }

    /// A step started; its spinner (on a terminal) so the step can show a status line.
    pub fn started(&mut self, i: usize, name: &str) -> Option<ProgressBar> {
        if let Some(multi) = &self.multi {
            let bar = multi.insert_from_back(1, ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .expect("valid template"),
            );
            bar.set_message(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.running.insert(i, bar.clone());
            return Some(bar);
        }
        None
    }

    pub fn finished(
        &mut self,
        i: usize,
        name: &str,
        status: StepStatus,
        seconds: f64,
        reason: &str,
    ) {
        let line = match status {
            StepStatus::Cached => format!("  cached   {name}"),
            StepStatus::Ran => format!("  ran      {name}  ({seconds:.2}s)"),
            StepStatus::Failed => format!("  FAILED   {name}  ({seconds:.2}s): {reason}"),
            StepStatus::Skipped => format!("  skipped  {name}: {reason}"),
        };
        if let Some(bar) = self.running.remove(&i) {
            bar.finish_and_clear();
        }
        match self.mode {
            OutputMode::Quiet => {}
            OutputMode::Plain => eprintln!("{line}"),
            OutputMode::Live => {
                if let (Some(multi), Some(total)) = (&self.multi, &self.total) {
                    if status != StepStatus::Cached {
                        let _ = multi.println(line);
                    }
                    total.inc(1);
                }
            }
        }
    }

    pub fn done(&mut self) {
        if let Some(total) = self.total.take() {
            total.finish_and_clear();
        }
    }
}
