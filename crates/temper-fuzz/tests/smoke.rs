//! A short, deterministic run of every fuzz target: its past findings
//! (tests/fixtures/fuzz/TARGET/) and a thousand mutated inputs, from a fixed generator
//! seed. Longer runs: `scripts/fuzz.sh SECONDS`.

use std::time::Duration;

use temper_fuzz::{fuzz, targets, Budget, Guard};

#[global_allocator]
static GUARD: Guard = Guard;

#[test]
fn every_target_survives_a_short_run() {
    let budget = Budget {
        executions: 1000,
        // A cap for slow machines; the executions decide on any usual one.
        time: Duration::from_secs(20),
    };
    let mut failures = Vec::new();
    for t in targets() {
        let r = fuzz(&t, budget, 7);
        println!(
            "{:<24} executions {:>6}  corpus {:>4}  findings {}",
            r.target,
            r.executions,
            r.corpus,
            r.findings.len()
        );
        assert!(r.executions > 0, "{}: nothing ran", r.target);
        // Only panics fail the test: a slow input depends on the machine (it is printed,
        // and `scripts/fuzz.sh` reports it).
        for f in &r.findings {
            if f.kind != "panic" {
                println!("    {}: {}", f.kind, f.message);
                continue;
            }
            failures.push(format!(
                "{}: {} ({}) on {:?}",
                r.target,
                f.kind,
                f.message,
                String::from_utf8_lossy(&f.input[..f.input.len().min(300)])
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
