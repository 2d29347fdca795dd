//! `temper train --nproc-per-node N` on the CPU: ranks as processes joined over TCP. Two
//! ranks take the steps of one process with the same global batch and write one set of
//! files; a rank that dies or a Ctrl-C ends the whole job, never leaving it hanging. Every
//! wait on a child has a limit, so a hang fails the test instead of stalling it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_config() -> String {
    repo()
        .join("examples/tiny/train.yaml")
        .to_str()
        .expect("utf8")
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs temper to the end, failing the test after `limit`.
fn temper(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("temper starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("temper output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("temper {args:?} did not finish within {limit:?}");
        }
    }
}

fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).expect("adapter");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = st.tensor(&n).expect("tensor");
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, v)
        })
        .collect()
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"].as_f64()
        })
        .collect()
}

#[test]
fn two_cpu_ranks_match_one_process_with_the_same_global_batch() {
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    let cfg = tiny_config();
    let common = ["--max_steps", "3", "--device", "cpu", "--eval_split", "0"];
    // One process: 2 micro-batches of 4 rows per step.
    let mut a = vec![
        "train",
        &cfg,
        "--output_dir",
        one.path().to_str().expect("utf8"),
    ];
    a.extend(common);
    a.extend(["--gradient_accumulation_steps", "2"]);
    let o = temper(&a, Duration::from_secs(300));
    assert!(o.status.success(), "one process failed:\n{}", text(&o));
    // Two ranks: 1 micro-batch of 4 rows each per step: the same 8 rows.
    let mut b = vec![
        "train",
        &cfg,
        "--nproc-per-node",
        "2",
        "--output_dir",
        two.path().to_str().expect("utf8"),
    ];
    b.extend(common);
    let o = temper(&b, Duration::from_secs(300));
    let log = text(&o);
    assert!(o.status.success(), "two ranks failed:\n{log}");
    assert!(
        log.contains("data parallel: 2 ranks, 8 rows per step"),
        "{log}"
    );

    // Rank 0 alone wrote: one metrics line per step, one adapter, one final checkpoint.
    let (l1, l2) = (losses(one.path()), losses(two.path()));
    assert_eq!(l2.len(), 3, "metrics of two ranks: {l2:?}");
    for (x, y) in l1.iter().zip(&l2) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "loss {x} vs {y}");
    }
    let mut entries: Vec<String> = std::fs::read_dir(two.path())
        .expect("output")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "chat_template.jinja",
            "checkpoint-3",
            "loss.svg",
            "metrics.jsonl",
            "tokenizer.json",
            "tokenizer_config.json",
            "training_config.yaml",
        ]
    );

    // The same adapter, up to the order of floating-point sums.
    let (t1, t2) = (tensors(one.path()), tensors(two.path()));
    assert_eq!(t1.len(), t2.len());
    let (mut diff2, mut norm2) = (0f64, 0f64);
    for ((n1, v1), (n2, v2)) in t1.iter().zip(&t2) {
        assert_eq!(n1, n2);
        for (x, y) in v1.iter().zip(v2) {
            diff2 += (f64::from(*x) - f64::from(*y)).powi(2);
            norm2 += f64::from(*x).powi(2);
        }
    }
    let rel = (diff2 / norm2).sqrt();
    println!("2 ranks vs 1 process, 3 steps: relative L2 difference of the adapters {rel:.2e}");
    assert!(rel < 1e-5, "the adapters differ: {rel:.2e}");
}

/// Starts temper with stderr read line by line on a thread.
/// `temper train` of the embedded default with two CPU ranks and steps enough to outlast the
/// test, writing to `out`; its stderr comes line by line.
fn start_two_ranks(out: &Path) -> (Child, mpsc::Receiver<String>) {
    let cfg = tiny_config();
    let mut child = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args([
            "train",
            &cfg,
            "--nproc-per-node",
            "2",
            "--max_steps",
            "500",
            "--device",
            "cpu",
            "--output_dir",
            out.to_str().expect("utf8"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("temper starts");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one satisfies `want` (returned), failing after `limit`.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    log: &mut String,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if want(&line) {
                    return line;
                }
            }
            Err(_) => {
                panic!("the expected line did not come within {limit:?}; output so far:\n{log}")
            }
        }
    }
}

/// Waits for the process to exit (killing it after `limit`) and collects the rest of its output.
fn finish(
    mut child: Child,
    rx: &mpsc::Receiver<String>,
    log: &mut String,
    limit: Duration,
) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        while let Ok(line) = rx.try_recv() {
            log.push_str(&line);
            log.push('\n');
        }
        if let Some(status) = child.try_wait().expect("wait") {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                log.push_str(&line);
                log.push('\n');
            }
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher did not exit within {limit:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rank_that_dies_ends_the_job_with_its_name() {
    let out = tempfile::tempdir().expect("tempdir");
    let (child, rx) = start_two_ranks(out.path());
    let mut log = String::new();
    // Rank 0 writes to the same stderr as the launcher, so a line may carry the start of one
    // of rank 0's lines: look for the text anywhere in it.
    const STARTED: &str = "started rank 1 (pid ";
    let line = wait_for(&rx, &mut log, Duration::from_secs(120), |l| {
        l.contains(STARTED)
    });
    let pid: String = line[line.find(STARTED).expect("found") + STARTED.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    // Let the ranks get going, then kill rank 1 as the kernel's OOM killer would.
    wait_for(&rx, &mut log, Duration::from_secs(120), |l| {
        l.contains("step 1/")
    });
    let killed = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = finish(child, &rx, &mut log, Duration::from_secs(120));
    assert!(!status.success(), "the launcher succeeded:\n{log}");
    assert!(
        log.contains(&format!("rank 1 (pid {pid}) ended with signal 9")),
        "{log}"
    );
}

#[test]
fn ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    let out = tempfile::tempdir().expect("tempdir");
    let (child, rx) = start_two_ranks(out.path());
    let mut log = String::new();
    wait_for(&rx, &mut log, Duration::from_secs(120), |l| {
        l.contains("step 2/")
    });
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = finish(child, &rx, &mut log, Duration::from_secs(120));
    assert_eq!(status.code(), Some(130), "{log}");
    let steps = losses(out.path()).len();
    assert!((2..500).contains(&steps), "{steps} steps:\n{log}");
    assert!(
        out.path()
            .join(format!("checkpoint-{steps}/trainer_state.json"))
            .exists(),
        "no checkpoint at the step where the ranks stopped ({steps}):\n{log}"
    );
    assert!(out.path().join("adapter_model.safetensors").exists());
    assert!(log.contains("continue with `--resume`"), "{log}");
}

#[test]
fn nproc_per_node_under_a_launcher_is_refused() {
    let o = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(["train", &tiny_config(), "--nproc-per-node", "2"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .expect("temper runs");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already started as a rank"),
        "{}",
        text(&o)
    );
}

#[test]
fn nccl_on_the_cpu_is_refused_with_the_alternative() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = temper(
        &[
            "train",
            &tiny_config(),
            "--device",
            "cpu",
            "--dist_backend",
            "nccl",
            "--max_steps",
            "1",
            "--output_dir",
            out.path().to_str().expect("utf8"),
        ],
        Duration::from_secs(120),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("dist_backend nccl needs --device cuda"),
        "{}",
        text(&o)
    );
}
