//! `temper-fuzz [--seconds N] [--executions N] [--seed N] [--out DIR] [TARGET ...]`: runs
//! every target (or those named) in turn and prints, for each, the executions, the corpus
//! size and the findings; a finding's input is written under `--out`. Exits 1 when any
//! target has a finding.

use std::path::PathBuf;
use std::time::Duration;

use temper_fuzz::{fuzz, targets, Budget, Guard};

#[global_allocator]
static GUARD: Guard = Guard;

fn main() {
    let mut seconds = 10.0f64;
    let mut executions = u64::MAX;
    let mut seed = 1u64;
    let mut out = PathBuf::from("target/fuzz");
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--seconds" => seconds = value("--seconds").parse().expect("--seconds N"),
            "--executions" => executions = value("--executions").parse().expect("--executions N"),
            "--seed" => seed = value("--seed").parse().expect("--seed N"),
            "--out" => out = PathBuf::from(value("--out")),
            "--list" => {
                for t in targets() {
                    println!("{}", t.name);
                }
                return;
            }
            other => only.push(other.to_string()),
        }
    }
    let budget = Budget {
        executions,
        time: Duration::from_secs_f64(seconds),
    };
    let mut any = false;
    for t in targets() {
        if !only.is_empty() && !only.iter().any(|o| o == t.name) {
            continue;
        }
        let dir = out.join(t.name);
        std::fs::create_dir_all(&dir).expect("output folder");
        temper_fuzz::engine::set_crash_file(&dir.join("crash-alloc")).expect("crash file");
        let r = fuzz(&t, budget, seed);
        println!(
            "{:<24} executions {:>10}  ({:>8.0}/s)  corpus {:>4}  findings {}",
            r.target,
            r.executions,
            r.executions as f64 / r.seconds.max(1e-9),
            r.corpus,
            r.findings.len()
        );
        for (i, f) in r.findings.iter().enumerate() {
            let path = dir.join(format!("{}-{i}", f.kind));
            std::fs::write(&path, &f.input).expect("write finding");
            println!("    {} {}: {}", f.kind, path.display(), f.message);
        }
        any |= !r.findings.is_empty();
        let _ = std::fs::remove_file(dir.join("crash-alloc"));
    }
    if any {
        std::process::exit(1);
    }
}
