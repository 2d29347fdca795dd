//! A small mutational fuzzer that runs on stable Rust: inputs from a seed corpus are mutated
//! (bit flips, interesting integers, insertions, deletions, splices, dictionary tokens) and
//! fed to a target; an input whose outcome is new (the target's outcome class: "ok" or the
//! shape of its error) joins the corpus, a cheap stand-in for coverage feedback.
//!
//! Findings: a panic, an input that takes longer than [`SLOW`], or (through [`Guard`], the
//! global allocator of any binary that links this crate) an allocation over [`BIG_ALLOC`],
//! which writes the input to the crash file and aborts, as libFuzzer's `-rss_limit` does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One input taking more CPU time than this is a finding.
pub const SLOW: Duration = Duration::from_secs(1);
/// One input taking longer than this on the wall clock is a finding too (a wait that burns no
/// CPU); the margin keeps a run at low priority, preempted for seconds by other work on the
/// machine, from reporting inputs that are not slow.
pub const SLOW_WALL: Duration = Duration::from_secs(10);

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the calling thread's CPU clock.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
/// One allocation larger than this is a finding.
pub const BIG_ALLOC: usize = 1 << 30;
/// The corpus stops growing here.
const MAX_CORPUS: usize = 512;

/// A fuzz target: seed inputs and a function that must return (not panic, hang or allocate
/// without bound) on any bytes. It returns a short outcome class for corpus feedback.
pub struct Target {
    pub name: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub run: fn(&[u8]) -> String,
    /// Tokens worth inserting (keywords, numbers, delimiters of the format).
    pub dictionary: &'static [&'static str],
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// "panic" or "slow".
    pub kind: &'static str,
    pub message: String,
    pub input: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub corpus: usize,
    pub findings: Vec<Finding>,
    pub seconds: f64,
}

/// How long to fuzz: whichever of the two comes first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub executions: u64,
    pub time: Duration,
}

/// xorshift64*: deterministic for a given seed, so a smoke run is reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    u64::MAX,
    u64::MAX - 1,
];

/// One to eight random mutations of `input`; `other` is another corpus entry to splice from.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], dict: &[&str], max_len: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        match rng.below(10) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next_u64() as u8;
            }
            2 if b.len() >= 8 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(b.len() - 7);
                if rng.below(2) == 0 {
                    b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    b[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
                }
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(64));
                b.drain(i..i + n);
            }
            4 => {
                let i = rng.below(b.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(i..i, bytes);
            }
            5 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(256));
                let chunk = b[i..i + n].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            6 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(512));
                let at = rng.below(b.len() + 1);
                let cut = rng.below((b.len() - at).min(512) + 1);
                b.splice(at..at + cut, other[i..i + n].iter().copied());
            }
            7 if !b.is_empty() => {
                let keep = rng.below(b.len());
                b.truncate(keep);
            }
            8 | 9 if !dict.is_empty() => {
                let word = dict[rng.below(dict.len())].as_bytes();
                let at = rng.below(b.len() + 1);
                if rng.below(2) == 0 || at == b.len() {
                    b.splice(at..at, word.iter().copied());
                } else {
                    let cut = rng.below((b.len() - at).min(word.len() + 4) + 1);
                    b.splice(at..at + cut, word.iter().copied());
                }
            }
            _ => {
                let i = rng.below(b.len() + 1);
                b.insert(i, b"\0\"{}[]:,\\\n"[rng.below(10)]);
            }
        }
    }
    b.truncate(max_len);
    b
}

/// The panic message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// Runs `target` within `budget`, starting the generator from `seed`.
pub fn fuzz(target: &Target, budget: Budget, seed: u64) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(seed ^ name_hash(target.name));
    let mut corpus: Vec<Vec<u8>> = (target.seeds)();
    corpus.extend(regressions(target.name));
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let max_len = corpus.iter().map(Vec::len).max().unwrap_or(0).max(256) * 2;
    let mut seen: std::collections::HashSet<String> = Default::default();
    let mut findings: Vec<Finding> = Vec::new();
    let mut executions = 0u64;
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // The seeds first, as they are; then mutations.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    while executions < budget.executions && started.elapsed() < budget.time {
        let input = match queue.pop() {
            Some(i) => i,
            None => {
                let a = &corpus[rng.below(corpus.len())];
                let b = &corpus[rng.below(corpus.len())];
                mutate(&mut rng, a, b, target.dictionary, max_len)
            }
        };
        executions += 1;
        let (t0, cpu0) = (Instant::now(), thread_cpu_time());
        set_current(&input);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        clear_current();
        let (took, cpu) = (t0.elapsed(), thread_cpu_time().saturating_sub(cpu0));
        match outcome {
            Ok(class) => {
                if cpu > SLOW || took > SLOW_WALL {
                    findings.push(Finding {
                        kind: "slow",
                        message: format!(
                            "took {:.1}s ({:.1}s of CPU)",
                            took.as_secs_f64(),
                            cpu.as_secs_f64()
                        ),
                        input: input.clone(),
                    });
                }
                if corpus.len() < MAX_CORPUS && seen.insert(class) {
                    corpus.push(input);
                }
            }
            Err(p) => {
                let message = panic_message(&*p);
                if findings.len() < 20 {
                    findings.push(Finding {
                        kind: "panic",
                        message,
                        input,
                    });
                }
            }
        }
    }
    std::panic::set_hook(previous_hook);
    Report {
        target: target.name,
        executions,
        corpus: corpus.len(),
        findings,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Inputs that once were findings, kept under `tests/fixtures/fuzz/<target>/`: every run
/// tries them first.
pub fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = crate::repo().join("tests/fixtures/fuzz").join(target);
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An outcome class from a result: "ok", or the error's text with digits removed and cut
/// short, so that inputs failing in new places join the corpus but numbers do not.
pub fn class<T, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e
            .to_string()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(60)
            .collect(),
    }
}

// ---- the allocation guard -----------------------------------------------------------------

static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static CRASH_FD: AtomicI32 = AtomicI32::new(-1);

fn set_current(input: &[u8]) {
    CURRENT_PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
    CURRENT_LEN.store(input.len(), Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

fn clear_current() {
    ARMED.store(false, Ordering::SeqCst);
}

/// Where the input of an over-large allocation is written before the process aborts.
pub fn set_crash_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: a NUL-terminated path; the descriptor is kept open for the process's life.
    let fd = unsafe {
        libc::open(
            c.as_ptr() as *const libc::c_char,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    CRASH_FD.store(fd, Ordering::SeqCst);
    Ok(())
}

/// Called inside the allocator: no allocation allowed, only raw writes.
fn too_big(size: usize) -> ! {
    let fd = CRASH_FD.load(Ordering::SeqCst);
    let (ptr, len) = (
        CURRENT_PTR.load(Ordering::SeqCst),
        CURRENT_LEN.load(Ordering::SeqCst),
    );
    let msg =
        b"temper-fuzz: FINDING alloc: one allocation over 1 GiB; the input is in the crash file\n";
    // SAFETY: plain writes of buffers that are alive (the input outlives its execution).
    unsafe {
        if fd >= 0 && !ptr.is_null() {
            libc::write(fd, ptr as *const libc::c_void, len);
        }
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
    }
    let _ = size;
    std::process::abort()
}

/// The system allocator, refusing (with a finding) any single allocation over
/// [`BIG_ALLOC`] while an input runs.
pub struct Guard;

// SAFETY: every call is forwarded to the system allocator unchanged; the guard only reads
// atomics and, for an over-large request, aborts.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > BIG_ALLOC && ARMED.load(Ordering::Relaxed) {
            too_big(l.size());
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > BIG_ALLOC && ARMED.load(Ordering::Relaxed) {
            too_big(l.size());
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > BIG_ALLOC && ARMED.load(Ordering::Relaxed) {
            too_big(new);
        }
        // SAFETY: forwarded as given.
        unsafe { System.realloc(p, l, new) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until this thread has used `d` more CPU time.
    fn spin_cpu(d: Duration) {
        let start = thread_cpu_time();
        while thread_cpu_time().saturating_sub(start) < d {
            std::hint::spin_loop();
        }
    }

    fn one_input() -> Vec<Vec<u8>> {
        vec![b"x".to_vec()]
    }

    /// An input is slow by the CPU time it takes, not by the wall clock: a run preempted (or
    /// waiting) for a while reports nothing, one computing for longer than SLOW does.
    #[test]
    fn slow_means_cpu_time() {
        let budget = Budget {
            executions: 1,
            time: Duration::from_secs(60),
        };
        let spins = Target {
            name: "spins",
            seeds: one_input,
            run: |_| {
                spin_cpu(SLOW + Duration::from_millis(200));
                "ok".into()
            },
            dictionary: &[],
        };
        let report = fuzz(&spins, budget, 1);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].kind, "slow");
        let waits = Target {
            name: "waits",
            seeds: one_input,
            run: |_| {
                std::thread::sleep(SLOW + Duration::from_millis(500));
                "ok".into()
            },
            dictionary: &[],
        };
        assert!(fuzz(&waits, budget, 1).findings.is_empty());
    }
}
