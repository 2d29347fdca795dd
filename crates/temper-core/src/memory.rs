//! One accounting point for device memory: every buffer a backend hands out is counted
//! until dropped, and the peak is what runs report.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by live buffers, and the most ever held at once.
#[derive(Default, Debug)]
pub struct Accounting {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl Accounting {
    pub fn add(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}
