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

    /// A step started; its spinner (on a terminal), or a hidden bar that holds its status line
    /// for [`Progress::tick`] (in a log), so the step can show a status line.
    pub fn started(&mut self, i: usize, name: &str) -> Option<ProgressBar> {
        if self.mode == OutputMode::Plain {
            let bar = ProgressBar::hidden();
            bar.set_message(name.to_string());
            self.running.insert(i, bar.clone());
            return Some(bar);
        }
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

    /// A line about the run (a published output), printed as step lines are.
    pub fn note(&self, line: &str) {
        match (&self.mode, &self.multi) {
            (OutputMode::Quiet, _) => {}
            (OutputMode::Live, Some(multi)) => {
                let _ = multi.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }

    /// In a log (not a terminal): one line per running step with its latest status (step,
    /// loss, tokens/s, ETA, as the step reports them) and how long it has run, so CI and
    /// batch logs show progress between a step's start and its end.
    pub fn tick(&self) {
        if self.mode != OutputMode::Plain {
            return;
        }
        let mut lines: Vec<(u64, String)> = self
            .running
            .values()
            .map(|bar| {
                let t = bar.elapsed().as_secs();
                (t, format!("  running  {}  ({})", bar.message(), clock(t)))
            })
            .collect();
        lines.sort();
        for (_, line) in lines.iter().rev() {
            eprintln!("{line}");
        }
    }

    pub fn done(&mut self) {
        if let Some(total) = self.total.take() {
            total.finish_and_clear();
        }
    }
}

/// How often a log gets the running steps' status lines: `DNAFLOW_PROGRESS_SECONDS` (default 30).
pub fn tick_interval() -> Duration {
    let secs = std::env::var("DNAFLOW_PROGRESS_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// `75` → `1m15s`.
fn clock(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_holds_the_running_steps_status() {
        let mut p = Progress::new(OutputMode::Plain, 2);
        let bar = p.started(0, "gpt2").expect("a bar in a log");
        bar.set_message("gpt2  step 300/700  loss 1.39");
        assert_eq!(p.running[&0].message(), "gpt2  step 300/700  loss 1.39");
        p.tick();
        p.finished(0, "gpt2", StepStatus::Ran, 1.0, "");
        assert!(p.running.is_empty());
        assert!(
            Progress::new(OutputMode::Quiet, 1)
                .started(0, "x")
                .is_none()
        );
        assert_eq!(clock(75), "1m15s");
    }
}
