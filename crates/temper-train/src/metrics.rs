//! `metrics.jsonl`, the one writer of it: one JSON object a line, a [`crate::StepReport`]
//! per optimizer step and a [`crate::EvalReport`] per evaluation, in the order they happen.
//! Only rank 0 writes it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io_err, Result, TrainError};

/// `output_dir/metrics.jsonl`, opened for appending at its first line, so that a run failing
/// before it writes anything leaves no file behind (which would make its output_dir
/// non-empty for the next fresh run).
pub struct MetricsLog {
    path: PathBuf,
    file: Option<File>,
}

impl MetricsLog {
    /// The log of the run writing to `output_dir`; nothing is opened yet.
    pub fn new(output_dir: &Path) -> Self {
        MetricsLog {
            path: output_dir.join("metrics.jsonl"),
            file: None,
        }
    }

    /// Rewrites the file keeping only the lines of steps up to `step` (on a fresh run there
    /// are none to keep), so that steps redone after a resume appear once.
    pub fn keep_until(&self, step: u64) -> Result<()> {
        let path = &self.path;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.len() != text.len() {
            let tmp = path.with_extension("jsonl.tmp");
            std::fs::write(&tmp, kept).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Appends `row` as one line (keys in the order of its fields).
    pub fn append(&mut self, row: &impl Serialize) -> Result<()> {
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io_err(&self.path))?,
            ),
        };
        let line = serde_json::to_string(row).map_err(|e| TrainError::Config(e.to_string()))?;
        writeln!(file, "{line}").map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::EvalReport;

    #[test]
    fn resuming_keeps_the_lines_up_to_the_checkpoint_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::new(dir.path());
        // Nothing written yet: nothing to keep, and no file made.
        log.keep_until(0).unwrap();
        assert!(!dir.path().join("metrics.jsonl").exists());
        for step in 1..=4 {
            log.append(&EvalReport {
                step,
                eval_loss: 1.0 / step as f64,
                eval_tokens: 7,
            })
            .unwrap();
        }
        let path = dir.path().join("metrics.jsonl");
        let all = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines[1], r#"{"step":2,"eval_loss":0.5,"eval_tokens":7}"#);
        MetricsLog::new(dir.path()).keep_until(2).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, format!("{}\n{}\n", lines[0], lines[1]));
        MetricsLog::new(dir.path()).keep_until(0).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
