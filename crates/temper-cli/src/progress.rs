//! The progress bar of `temper train`: step, loss, learning rate, tokens/s and ETA. Off a
//! terminal it prints one log line every `logging_steps` steps instead.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use temper_train::{Observer, StepReport};

pub struct Progress {
    bar: Option<ProgressBar>,
    logging_steps: u64,
}

impl Progress {
    pub fn new(logging_steps: u64) -> Self {
        Progress {
            bar: None,
            logging_steps,
        }
    }
}

impl Observer for Progress {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps);
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(start_step);
            self.bar = Some(bar);
        }
        if start_step > 0 {
            eprintln!("resuming at step {start_step} of {total_steps}");
        }
    }

    fn on_step(&mut self, r: &StepReport) {
        let msg = format!(
            "loss {:.4} lr {:.2e} grad_norm {:.3} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(msg);
            }
            None => {
                if r.step.is_multiple_of(self.logging_steps) || r.step == r.total_steps {
                    eprintln!("step {}/{} {msg}", r.step, r.total_steps);
                }
            }
        }
    }

    fn stop_requested(&mut self) -> bool {
        crate::interrupt::requested()
    }

    fn on_save(&mut self, dir: &std::path::Path) {
        let line = format!("saved {}", dir.display());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
