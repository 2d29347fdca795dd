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
    let lib = temper_train::nccl_lib::versioned_library()?;
    if lib.with_file_name("libnccl.so").exists() {
        return None;
    }
    let cache =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/temper"))?;
    let dir = temper_train::nccl_lib::link_dir(&lib, &cache).ok()?;
    let mut paths = vec![dir];
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).ok()
}

/// Copies a rank's output to ours, each line prefixed.
fn forward(rank: usize, from: impl std::io::Read + Send + 'static, to_stderr: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "[rank {rank}] {line}");
            }
        }
    });
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill() on the pid of a child we started and have not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
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
    interrupt::install();
    eprintln!("launching {n} ranks on this host (MASTER_ADDR 127.0.0.1, MASTER_PORT {port})");
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
        eprintln!("started rank {rank} (pid {})", child.id());
        children.push(child);
    }
    supervise(children)
}

/// Waits for every rank; on the first failure stops the rest.
fn supervise(mut children: Vec<Child>) -> Result<()> {
    let n = children.len();
    let mut done: Vec<Option<ExitStatus>> = vec![None; n];
    let mut passed_on = false;
    while done.iter().any(Option::is_none) {
        if interrupt::requested() && !passed_on {
            passed_on = true;
            eprintln!(
                "interrupt: asking every rank to stop after this step (Ctrl-C again kills them)"
            );
            for (c, d) in children.iter().zip(&done) {
                if d.is_none() {
                    signal(c, libc::SIGINT);
                }
            }
            // From now on a second Ctrl-C kills the launcher; PR_SET_PDEATHSIG stops the ranks.
        }
        for (rank, c) in children.iter_mut().enumerate() {
            if done[rank].is_some() {
                continue;
            }
            let Some(status) = c.try_wait().context("waiting for a rank")? else {
                continue;
            };
            done[rank] = Some(status);
            // A rank asked to stop exits 130 after saving, or dies of the SIGINT when it
            // arrived before training began.
            let stopped_by_request = passed_on
                && (status.code() == Some(interrupt::EXIT_CODE)
                    || status.signal() == Some(libc::SIGINT));
            if !status.success() && !stopped_by_request {
                let pid = c.id();
                for (c, d) in children.iter().zip(&done) {
                    if d.is_none() {
                        signal(c, libc::SIGTERM);
                    }
                }
                // Let the others go, then report.
                let deadline = Instant::now() + Duration::from_secs(10);
                for (r, c) in children.iter_mut().enumerate() {
                    if done[r].is_some() {
                        continue;
                    }
                    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if c.try_wait().ok().flatten().is_none() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                bail!(
                    "rank {rank} (pid {pid}) ended with {}; stopped the other {} rank(s){}",
                    describe(status),
                    n - 1,
                    if status.code().is_some() {
                        " (its own error is above)"
                    } else {
                        ""
                    }
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if passed_on {
        eprintln!("every rank stopped after the interrupt");
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
