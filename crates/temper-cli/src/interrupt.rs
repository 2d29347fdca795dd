//! Ctrl-C (SIGINT), SIGTERM and SIGHUP during training: the first one asks training to stop
//! after the current step (all ranks agree on it, rank 0 saves a checkpoint); a second one
//! of the same signal kills the process as usual. Schedulers (SLURM, Kubernetes) send
//! SIGTERM some time before they kill a job, and a closed terminal sends SIGHUP: both leave
//! a checkpoint to resume from, as Ctrl-C does.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a run stopped by one of these signals once its checkpoint is written
/// (128 + SIGINT, as shells report Ctrl-C).
pub const EXIT_CODE: i32 = 130;

/// The signals that stop training with a checkpoint.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; the next such signal gets the default action.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Catches the first SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in SIGNALS {
        // SAFETY: the handler only stores to an atomic and resets its own disposition.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// True once one of [`SIGNALS`] has arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
