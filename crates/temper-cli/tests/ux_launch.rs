//! Launch variables beyond torchrun's, on the CPU collective: two ranks started as srun
//! starts Slurm tasks, and as a Kubeflow PyTorchJob starts pods (no LOCAL_RANK); and Ctrl-C
//! saying what it does.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::repo;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs two ranks with `vars(rank)` and returns (rank 0's output, each rank's success).
fn two_ranks(out: &Path, vars: impl Fn(usize) -> Vec<(String, String)>) -> String {
    let cfg = repo().join("examples/tiny/train.yaml");
    let children: Vec<_> = (0..2)
        .map(|r| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_temper"));
            cmd.args(["train", cfg.to_str().expect("utf8"), "--max_steps", "2"])
                .args([
                    "--output_dir",
                    out.to_str().expect("utf8"),
                    "--device",
                    "cpu",
                ])
                .args(["--dist_timeout", "60"])
                .env_remove("RANK")
                .env_remove("WORLD_SIZE")
                .env_remove("LOCAL_RANK")
                .env_remove("MASTER_ADDR")
                .env_remove("MASTER_PORT")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in vars(r) {
                cmd.env(k, v);
            }
            cmd.spawn().expect("temper starts")
        })
        .collect();
    let mut lead = String::new();
    for (r, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().expect("output");
        let t = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "rank {r}:\n{t}");
        if r == 0 {
            lead = t;
        }
    }
    lead
}

#[test]
fn slurm_tasks_train_as_ranks() {
    let out = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let lead = two_ranks(out.path(), |r| {
        [
            ("SLURM_PROCID", r.to_string()),
            ("SLURM_LOCALID", r.to_string()),
            ("SLURM_NTASKS", "2".into()),
            ("SLURM_STEP_ID", "0".into()),
            ("SLURM_JOB_ID", "4242".into()),
            ("SLURM_JOB_NODELIST", "localhost,node[02-03]".into()),
            ("MASTER_PORT", port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    });
    assert!(
        lead.contains("launcher: slurm: RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=localhost"),
        "{lead}"
    );
    assert!(lead.contains("data parallel: 2 ranks"), "{lead}");
    assert!(out.path().join("adapter_model.safetensors").exists());
}

#[test]
fn kubeflow_pods_without_local_rank_train_as_ranks() {
    let out = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let lead = two_ranks(out.path(), |r| {
        [
            ("RANK", r.to_string()),
            ("WORLD_SIZE", "2".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    });
    assert!(lead.contains("LOCAL_RANK=0"), "{lead}");
    assert!(lead.contains("data parallel: 2 ranks"), "{lead}");
}

#[test]
fn ctrl_c_says_it_finishes_the_step_and_saves() {
    let out = tempfile::tempdir().expect("tempdir");
    let cfg = repo().join("examples/tiny/train.yaml");
    // Steps of 16 micro-batches: the second Ctrl-C lands inside the step the first one let
    // finish, however late this test gets to send it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args([
            "train",
            cfg.to_str().expect("utf8"),
            "--max_steps",
            "100000",
            "--gradient_accumulation_steps",
            "16",
        ])
        .args([
            "--output_dir",
            out.path().to_str().expect("utf8"),
            "--device",
            "cpu",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("temper starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line.starts_with("step 2/") {
            break;
        }
    }
    // SAFETY: signalling our own child, which has not been waited for.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line);
        if seen
            .last()
            .is_some_and(|l| l.contains("press Ctrl-C again"))
        {
            break;
        }
    }
    let said = seen.join("\n");
    assert!(said.contains("Ctrl-C: finishing step "), "{said}");
    assert!(
        said.contains(" and saving; press Ctrl-C again to stop now"),
        "{said}"
    );
    // A second Ctrl-C stops at once and says what was lost.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    for line in lines {
        seen.push(line.expect("line"));
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    let said = seen.join("\n");
    assert!(said.contains("Ctrl-C again: "), "{said}");
    assert!(said.contains("lost"), "{said}");
}
