//! The progress display of `temper train`: step, loss, learning rate, tokens/s, the last eval
//! loss, device memory in use and its peak, elapsed time and ETA. On a terminal it is a bar;
//! otherwise one line every `logging_steps` steps. It also feeds the TensorBoard event file
//! when `report_to: tensorboard`.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use temper_train::{EvalReport, Observer, StepReport};

use crate::tensorboard::EventWriter;

/// Device memory (bytes in use, peak bytes), read when a step is reported.
pub type MemoryProbe = Box<dyn Fn() -> (usize, usize)>;

pub struct Progress {
    bar: Option<ProgressBar>,
    logging_steps: u64,
    memory: MemoryProbe,
    device: String,
    started: Instant,
    start_step: u64,
    last_eval: Option<f64>,
    tensorboard: Option<EventWriter>,
    /// A TensorBoard write failed: said once, then no more writes.
    tensorboard_failed: bool,
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// "42s", "3m07s", "1h02m".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// `device`: the backend's name, shown before its memory ("cpu", "cuda").
    pub fn new(logging_steps: u64, device: &str, memory: MemoryProbe) -> Self {
        Progress {
            bar: None,
            logging_steps,
            memory,
            device: device.to_string(),
            started: Instant::now(),
            start_step: 0,
            last_eval: None,
            tensorboard: None,
            tensorboard_failed: false,
        }
    }

    pub fn with_tensorboard(mut self, w: Option<EventWriter>) -> Self {
        self.tensorboard = w;
        self
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) {
        if self.tensorboard_failed {
            return;
        }
        if let Some(w) = self.tensorboard.as_mut() {
            if let Err(e) = w.scalars(step, values) {
                self.tensorboard_failed = true;
                self.print(&format!("warning: TensorBoard events stop here: {e:#}"));
            }
        }
    }

    /// The message of one step: what the bar shows beside it and the log line prints.
    fn message(&self, r: &StepReport) -> (String, f64) {
        let (live, peak) = (self.memory)();
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = r.step.saturating_sub(self.start_step).max(1);
        let eta = elapsed / done as f64 * r.total_steps.saturating_sub(r.step) as f64;
        let mut msg = format!(
            "loss {:.4} lr {:.2e} grad_norm {:.3} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        );
        if let Some(e) = self.last_eval {
            msg.push_str(&format!(" eval_loss {e:.4}"));
        }
        msg.push_str(&format!(
            " | {} mem {:.1} MiB (peak {:.1} MiB) | elapsed {}",
            self.device,
            mib(live),
            mib(peak),
            duration(elapsed)
        ));
        (msg, eta)
    }
}

impl Observer for Progress {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.started = Instant::now();
        self.start_step = start_step;
        crate::interrupt::set_step(start_step + 1);
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
        crate::interrupt::set_step(r.step + 1);
        let (msg, eta) = self.message(r);
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(msg);
            }
            None => {
                if r.step.is_multiple_of(self.logging_steps) || r.step == r.total_steps {
                    eprintln!(
                        "step {}/{} {msg} eta {}",
                        r.step,
                        r.total_steps,
                        duration(eta)
                    );
                }
            }
        }
        let (live, peak) = (self.memory)();
        self.scalars(
            r.step,
            &[
                ("train/loss", r.loss),
                ("train/learning_rate", r.lr),
                ("train/grad_norm", r.grad_norm),
                ("train/tokens_per_second", r.tokens_per_s),
                ("train/epoch", r.epoch),
                ("memory/device_mib", mib(live)),
                ("memory/device_peak_mib", mib(peak)),
            ],
        );
    }

    fn on_eval(&mut self, r: &EvalReport) {
        self.last_eval = Some(r.eval_loss);
        self.print(&format!(
            "eval at step {}: loss {:.4} (perplexity {:.3}) over {} tokens",
            r.step,
            r.eval_loss,
            r.eval_loss.exp(),
            r.eval_tokens
        ));
        self.scalars(r.step, &[("eval/loss", r.eval_loss)]);
    }

    fn stop_requested(&mut self) -> bool {
        crate::interrupt::requested()
    }

    fn on_save(&mut self, dir: &std::path::Path) {
        if let Some(step) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse().ok())
        {
            crate::interrupt::set_saved(step);
        }
        self.print(&format!("saved {}", dir.display()));
    }

    fn on_note(&mut self, note: &str) {
        self.print(note);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
