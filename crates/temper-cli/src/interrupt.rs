//! Ctrl-C (SIGINT), SIGTERM and SIGHUP during training: the first one asks training to stop
//! after the current step (all ranks agree on it, rank 0 saves a checkpoint) and says so at
//! once; a second one stops the process there and then, saying what was lost. Schedulers
//! (SLURM, Kubernetes) send SIGTERM some time before they kill a job, and a closed terminal
//! sends SIGHUP: both leave a checkpoint to resume from, as Ctrl-C does.
//!
//! The handler only touches atomics and writes with write(2), which are async-signal-safe:
//! the messages are assembled in a buffer on the handler's stack.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Whether this process prints the messages (rank 0 only).
static ANNOUNCE: AtomicBool = AtomicBool::new(true);
/// The step being computed (1-based), and the step of the newest checkpoint (0: none).
static STEP: AtomicU64 = AtomicU64::new(0);
static SAVED: AtomicU64 = AtomicU64::new(0);
/// True once training has returned and its files are written.
static FINISHED: AtomicBool = AtomicBool::new(false);

/// The exit status of a run stopped by one of these signals (128 + SIGINT, as shells report
/// Ctrl-C).
pub const EXIT_CODE: i32 = 130;

/// The signals that stop training with a checkpoint.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How the messages name a signal.
fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "Ctrl-C",
    }
}

/// A message built without allocating.
struct Msg {
    buf: [u8; 512],
    len: usize,
}

impl Msg {
    fn new() -> Self {
        Msg {
            buf: [0; 512],
            len: 0,
        }
    }

    fn s(&mut self, text: &str) -> &mut Self {
        for &b in text.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn n(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        loop {
            k -= 1;
            digits[k] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in &digits[k..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = d;
                self.len += 1;
            }
        }
        self
    }

    fn write(&self) {
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe {
            libc::write(2, self.buf.as_ptr().cast(), self.len);
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let name = signal_name(sig);
    let announce = ANNOUNCE.load(Ordering::SeqCst);
    let step = STEP.load(Ordering::SeqCst);
    let saved = SAVED.load(Ordering::SeqCst);
    if !REQUESTED.swap(true, Ordering::SeqCst) {
        if announce {
            Msg::new()
                .s("\n")
                .s(name)
                .s(": finishing step ")
                .n(step)
                .s(" and saving; press Ctrl-C again to stop now\n")
                .write();
        }
        return;
    }
    if announce {
        let mut m = Msg::new();
        if FINISHED.load(Ordering::SeqCst) {
            m.s("\n")
                .s(name)
                .s(" again: the checkpoint of step ")
                .n(saved)
                .s(" is written, nothing is lost\n");
        } else if saved > 0 {
            m.s("\n")
                .s(name)
                .s(" again: stopped during step ")
                .n(step)
                .s("; the work since checkpoint-")
                .n(saved)
                .s(" (steps ")
                .n(saved + 1)
                .s(" to ")
                .n(step)
                .s(") is lost; `--resume` continues from checkpoint-")
                .n(saved)
                .s("\n");
        } else {
            m.s("\n")
                .s(name)
                .s(" again: stopped during step ")
                .n(step)
                .s(" before any checkpoint was written: steps 1 to ")
                .n(step)
                .s(" are lost (set save_steps to keep checkpoints)\n");
        }
        m.write();
    }
    // SAFETY: _exit is async-signal-safe and skips destructors that might not be.
    unsafe {
        libc::_exit(EXIT_CODE);
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on; `announce`: print the messages (rank 0).
pub fn install(announce: bool) {
    ANNOUNCE.store(announce, Ordering::SeqCst);
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in SIGNALS {
        // SAFETY: the handler only touches atomics, writes with write(2) and calls _exit.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// True once one of [`SIGNALS`] has arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The step now being computed (1-based).
pub fn set_step(step: u64) {
    STEP.store(step, Ordering::SeqCst);
}

/// A checkpoint of `step` is written.
pub fn set_saved(step: u64) {
    SAVED.store(step, Ordering::SeqCst);
}

/// Training has returned with its files written.
pub fn set_finished() {
    FINISHED.store(true, Ordering::SeqCst);
}
