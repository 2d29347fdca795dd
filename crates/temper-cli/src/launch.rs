//! `temper train --nproc-per-node N`: starts N ranks of this same command on this host, as
//! torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and
//! a free MASTER_PORT), and watches them. Rank 0 writes to this terminal directly; the
//! others' lines are prefixed `[rank k]`. When a rank fails, the others are stopped and the
//! launcher exits non-zero naming it. The first Ctrl-C is passed to every rank (they stop
//! together after the step and rank 0 saves); a second one kills them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::interrupt;

/// The command line without `--nproc-per-node N` (any spelling), for the ranks.
pub fn rank_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--nproc-per-node" || s == "--nproc_per_node" {
            skip_value = true;
        } else if !(s.starts_with("--nproc-per-node=") || s.starts_with("--nproc_per_node=")) {
            out.push(a.clone());
        }
    }
    out
}

/// A TCP port nobody listens on now (the OS picks it).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// How a rank ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(9)) => {
            "signal 9 (SIGKILL: killed, perhaps by the kernel's out-of-memory killer)".into()
        }
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// LD_LIBRARY_PATH for the ranks: when NCCL is installed only as libnccl.so.2, a folder with
/// a `libnccl.so` link to it comes first, so the ranks can open it by that name.
fn library_path() -> Option<OsString> {
    let lib = temper_train::dist::nccl_lib::versioned_library()?;
    if lib.with_file_name("libnccl.so").exists() {
        return None;
    }
    let cache = temper_core::cache::root()?;
    let dir = temper_train::dist::nccl_lib::link_dir(&lib, &cache).ok()?;
    let mut paths = vec![dir];
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).ok()
}

/// Writes a whole line with one `write` call: rank 0 shares our stderr, and a pipe keeps a
/// single write of under 4 KiB in one piece.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Copies a rank's output to ours, each line prefixed.
fn forward(rank: usize, from: impl std::io::Read + Send + 'static, to_stderr: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let text = format!("[rank {rank}] {line}\n");
            let _ = if to_stderr {
                std::io::stderr().write_all(text.as_bytes())
            } else {
                std::io::stdout().lock().write_all(text.as_bytes())
            };
        }
    });
}

/// Starts `n` ranks running this executable with `args`, and waits for them.
pub fn run(n: usize, args: &[OsString]) -> Result<()> {
    if n == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    if crate::dist::launched() {
        bail!("--nproc-per-node starts its own ranks, but this process was already started as a rank (RANK/WORLD_SIZE are set by a launcher): use one or the other");
    }
    let exe = std::env::current_exe().context("finding the temper executable")?;
    let port = free_port()?;
    let ld_path = library_path();
    interrupt::install(false);
    say(&format!(
        "launching {n} ranks on this host (MASTER_ADDR 127.0.0.1, MASTER_PORT {port})"
    ));
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches the launcher alone, which passes
            // exactly one SIGINT on.
            .process_group(0);
        if let Some(p) = &ld_path {
            cmd.env("LD_LIBRARY_PATH", p);
        }
        // SAFETY: prctl is async-signal-safe; the rank is told to stop if the launcher dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if rank > 0 {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut children);
                return Err(anyhow!("starting rank {rank} ({}): {e}", exe.display()));
            }
        };
        if let Some(out) = child.stdout.take() {
            forward(rank, out, false);
        }
        if let Some(err) = child.stderr.take() {
            forward(rank, err, true);
        }
        say(&format!("started rank {rank} (pid {})", child.id()));
        children.push(child);
    }
    supervise(children)
}

/// Whether a rank's end is a failure (a rank asked to stop by Ctrl-C exits 130 after
/// saving, or dies of the SIGINT when it came before training began).
fn failed(status: ExitStatus, interrupted: bool) -> bool {
    let asked_to_stop = interrupted
        && (status.code() == Some(interrupt::EXIT_CODE) || status.signal() == Some(libc::SIGINT));
    !status.success() && !asked_to_stop
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill() on the pid of a child we started and that has not been reaped yet
    // (callers only signal ranks whose exit has not been reported).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The rank that brought the job down: among the failures seen before the others were
/// stopped, the first killed by a signal (a crash, the OOM killer: its peers then fail only
/// because it vanished), else the first to fail.
fn cause(failures: &[(usize, ExitStatus)]) -> Option<(usize, ExitStatus)> {
    failures
        .iter()
        .find(|(_, s)| s.signal().is_some())
        .or_else(|| failures.first())
        .copied()
}

/// Waits for every rank. When one fails, the launcher lets 200 ms pass (its peers may fail
/// too, having lost it), picks the cause, stops the rest (SIGTERM, then SIGKILL after 10 s)
/// and fails naming it. Each rank is waited for on its own thread, so ranks are seen in the
/// order they ended.
fn supervise(children: Vec<Child>) -> Result<()> {
    let n = children.len();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let (tx, rx) = mpsc::channel();
    for (rank, mut c) in children.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((rank, c.wait()));
        });
    }
    drop(tx);
    let mut done: Vec<Option<ExitStatus>> = vec![None; n];
    let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut passed_on = false;
    let mut killed = false;
    let running =
        |done: &[Option<ExitStatus>]| (0..n).filter(|&r| done[r].is_none()).collect::<Vec<_>>();
    while done.iter().any(Option::is_none) {
        if interrupt::requested() && !passed_on {
            passed_on = true;
            say("interrupt: asking every rank to stop after this step (Ctrl-C again kills them)");
            for r in running(&done) {
                signal(pids[r], libc::SIGINT);
            }
        }
        if let (Some(t), None) = (first_failure, stopping_since) {
            if t.elapsed() > Duration::from_millis(200) {
                stopping_since = Some(Instant::now());
                for r in running(&done) {
                    signal(pids[r], libc::SIGTERM);
                }
            }
        }
        if let Some(t) = stopping_since {
            if !killed && t.elapsed() > Duration::from_secs(10) {
                killed = true;
                for r in running(&done) {
                    signal(pids[r], libc::SIGKILL);
                }
            }
        }
        let (rank, status) = match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(got) => got,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let status = status.with_context(|| format!("waiting for rank {rank}"))?;
        done[rank] = Some(status);
        if stopping_since.is_none() && failed(status, passed_on) {
            failures.push((rank, status));
            first_failure.get_or_insert_with(Instant::now);
        }
    }
    if let Some((rank, status)) = cause(&failures) {
        bail!(
            "rank {rank} (pid {}) ended with {}; stopped the other {} rank(s){}",
            pids[rank],
            describe(status),
            n - 1,
            if status.code().is_some() {
                " (its own error is above)"
            } else {
                ""
            }
        );
    }
    if passed_on {
        say("every rank stopped after the interrupt");
        std::process::exit(interrupt::EXIT_CODE);
    }
    Ok(())
}

/// Kills ranks already started (when a later one cannot start).
fn stop_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_rank_is_the_cause_not_the_peer_that_lost_it() {
        let exit1 = ExitStatus::from_raw(1 << 8);
        let sigkill = ExitStatus::from_raw(9);
        // Rank 0 was reported first (it saw its peer vanish), rank 1 was killed.
        let c = cause(&[(0, exit1), (1, sigkill)]).expect("a cause");
        assert_eq!(c.0, 1);
        assert!(describe(c.1).contains("signal 9"));
        assert_eq!(cause(&[(2, exit1), (0, exit1)]).map(|c| c.0), Some(2));
        assert_eq!(cause(&[]), None);
    }

    #[test]
    fn the_ranks_do_not_launch_again() {
        let args: Vec<OsString> = [
            "train",
            "cfg.yaml",
            "--nproc-per-node",
            "2",
            "--max_steps",
            "3",
            "--nproc_per_node=4",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = rank_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["train", "cfg.yaml", "--max_steps", "3"]);
    }
}
