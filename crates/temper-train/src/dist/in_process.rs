//! N ranks as N threads of one process, sharing a hub (a mutex and a condition variable).
//! Each collective is a round: every rank leaves its values, the last to arrive combines them
//! in rank order, and every rank takes the result. Used by tests to run data-parallel
//! training on the CPU backend without processes or GPUs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::dist::collective::{
    sum_in_rank_order_f32, sum_in_rank_order_f64, HostCollective, DEFAULT_BUCKET_BYTES,
};
use crate::error::{Result, TrainError};

/// What a rank brings to a round.
#[derive(Clone, Debug)]
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

impl Payload {
    fn describe(&self) -> String {
        match self {
            Payload::F32(v) => format!("all_reduce of {} f32 values", v.len()),
            Payload::F64(v) => format!("all_reduce of {} f64 values", v.len()),
            Payload::Bytes(_) => "broadcast".into(),
        }
    }
}

struct State {
    /// The round now collecting contributions.
    round: u64,
    parts: Vec<Option<Payload>>,
    /// Finished rounds: the combined value (or why the ranks disagreed) and how many ranks
    /// have yet to take it.
    done: HashMap<u64, (Arc<std::result::Result<Payload, String>>, usize)>,
    /// Ranks whose handle is gone (the thread returned or failed).
    gone: Vec<bool>,
}

struct Hub {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// One rank's handle. Dropping it tells the other ranks this one has left, so none waits
/// for it forever.
pub struct InProcess {
    rank: usize,
    hub: Arc<Hub>,
    round: AtomicU64,
    bucket_bytes: usize,
}

impl InProcess {
    /// Handles for ranks 0..world; a rank waits at most `timeout` for the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let hub = Arc::new(Hub {
            world,
            timeout,
            state: Mutex::new(State {
                round: 0,
                parts: vec![None; world],
                done: HashMap::new(),
                gone: vec![false; world],
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                hub: hub.clone(),
                round: AtomicU64::new(0),
                bucket_bytes: DEFAULT_BUCKET_BYTES,
            })
            .collect()
    }

    /// Sums gradients in buckets of at most `bytes` (tests use small ones to get several).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.hub.state.lock().map_err(|_| {
            TrainError::Distributed("a rank thread panicked inside a collective".into())
        })
    }

    /// Leaves `mine` for this round and returns the combined value.
    fn exchange(&self, mine: Payload) -> Result<Arc<std::result::Result<Payload, String>>> {
        let hub = &*self.hub;
        let what = mine.describe();
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock()?;
        if st.round != round {
            return Err(TrainError::Distributed(format!(
                "rank {} is at collective {round} but the group is at {}",
                self.rank, st.round
            )));
        }
        st.parts[self.rank] = Some(mine);
        if st.parts.iter().all(Option::is_some) {
            let parts: Vec<Payload> = st.parts.iter_mut().filter_map(Option::take).collect();
            let combined = combine(&parts);
            st.done.insert(round, (Arc::new(combined), hub.world));
            st.round += 1;
            hub.cv.notify_all();
        }
        let deadline = Instant::now() + hub.timeout;
        loop {
            if let Some((value, left)) = st.done.get_mut(&round) {
                let value = value.clone();
                *left -= 1;
                if *left == 0 {
                    st.done.remove(&round);
                }
                return Ok(value);
            }
            let missing: Vec<usize> = (0..hub.world).filter(|&r| st.parts[r].is_none()).collect();
            if let Some(&r) = missing.iter().find(|&&r| st.gone[r]) {
                return Err(TrainError::Distributed(format!(
                    "rank {r} stopped (it returned or failed) while rank {} waited for it in an {what}; see rank {r}'s error",
                    self.rank
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TrainError::Distributed(format!(
                    "rank {} waited {:.0} s in an {what} for ranks {missing:?}: they may be hung; raise dist_timeout if they are only slow",
                    self.rank,
                    hub.timeout.as_secs_f64()
                )));
            }
            st = hub
                .cv
                .wait_timeout(st, deadline - now)
                .map_err(|_| {
                    TrainError::Distributed("a rank thread panicked inside a collective".into())
                })?
                .0;
        }
    }
}

/// The round's result: the rank-order sum, or rank 0's bytes.
fn combine(parts: &[Payload]) -> std::result::Result<Payload, String> {
    let mismatch = |r: usize| {
        format!(
            "the ranks are out of step: rank 0 called {} but rank {r} called {}",
            parts[0].describe(),
            parts[r].describe()
        )
    };
    match &parts[0] {
        Payload::F32(first) => {
            let mut views = Vec::with_capacity(parts.len());
            for (r, p) in parts.iter().enumerate() {
                match p {
                    Payload::F32(v) if v.len() == first.len() => views.push(&v[..]),
                    _ => return Err(mismatch(r)),
                }
            }
            let mut out = vec![0f32; first.len()];
            sum_in_rank_order_f32(&views, &mut out);
            Ok(Payload::F32(out))
        }
        Payload::F64(first) => {
            let mut views = Vec::with_capacity(parts.len());
            for (r, p) in parts.iter().enumerate() {
                match p {
                    Payload::F64(v) if v.len() == first.len() => views.push(&v[..]),
                    _ => return Err(mismatch(r)),
                }
            }
            let mut out = vec![0f64; first.len()];
            sum_in_rank_order_f64(&views, &mut out);
            Ok(Payload::F64(out))
        }
        Payload::Bytes(first) => {
            if let Some(r) = parts.iter().position(|p| !matches!(p, Payload::Bytes(_))) {
                return Err(mismatch(r));
            }
            Ok(Payload::Bytes(first.clone()))
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Ok(mut st) = self.hub.state.lock() {
            st.gone[self.rank] = true;
        }
        self.hub.cv.notify_all();
    }
}

fn disagreed(msg: &str) -> TrainError {
    TrainError::Distributed(msg.to_string())
}

impl HostCollective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.hub.world
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        match &*self.exchange(Payload::F64(values.to_vec()))? {
            Ok(Payload::F64(sum)) => values.copy_from_slice(sum),
            Ok(_) => return Err(disagreed("internal: an all_reduce returned another kind")),
            Err(msg) => return Err(disagreed(msg)),
        }
        Ok(())
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        match &*self.exchange(Payload::F32(values.to_vec()))? {
            Ok(Payload::F32(sum)) => values.copy_from_slice(sum),
            Ok(_) => return Err(disagreed("internal: an all_reduce returned another kind")),
            Err(msg) => return Err(disagreed(msg)),
        }
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        match &*self.exchange(Payload::Bytes(std::mem::take(bytes)))? {
            Ok(Payload::Bytes(b)) => *bytes = b.clone(),
            Ok(_) => return Err(disagreed("internal: a broadcast returned another kind")),
            Err(msg) => return Err(disagreed(msg)),
        }
        Ok(())
    }
    fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send + 'static>(
        world: usize,
        timeout: Duration,
        f: impl Fn(InProcess) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = InProcess::group(world, timeout)
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    }

    #[test]
    fn sums_in_rank_order_and_broadcasts_rank_zero() {
        let out = run(3, Duration::from_secs(30), |c| {
            let r = c.rank as f32;
            let mut v = vec![r, 10.0 * r];
            c.all_reduce_f32(&mut v).expect("reduce");
            let mut w = vec![f64::from(r) + 0.5];
            c.all_reduce_f64(&mut w).expect("reduce");
            let mut b = format!("rank {}", c.rank).into_bytes();
            c.broadcast_bytes(&mut b).expect("broadcast");
            (v, w, String::from_utf8(b).expect("utf8"))
        });
        for (v, w, b) in out {
            assert_eq!(v, vec![3.0, 30.0]);
            assert_eq!(w, vec![4.5]);
            assert_eq!(b, "rank 0");
        }
    }

    #[test]
    fn a_rank_that_leaves_makes_the_others_fail_not_hang() {
        let out = run(3, Duration::from_secs(60), |c| {
            if c.rank == 2 {
                return Ok(()); // leaves without taking part
            }
            c.all_reduce_f64(&mut [1.0])
        });
        for r in &out[..2] {
            let msg = r.as_ref().expect_err("must fail").to_string();
            assert!(msg.contains("rank 2 stopped"), "{msg}");
        }
    }

    #[test]
    fn a_hung_rank_times_out_with_its_name() {
        let out = run(2, Duration::from_millis(200), |c| {
            if c.rank == 1 {
                std::thread::sleep(Duration::from_secs(2));
                return Ok(());
            }
            c.barrier_host()
        });
        let msg = out[0].as_ref().expect_err("must time out").to_string();
        assert!(msg.contains("for ranks [1]"), "{msg}");
    }

    #[test]
    fn mismatched_calls_are_an_error_on_every_rank() {
        let out = run(2, Duration::from_secs(30), |c| {
            let mut v = vec![0.0; c.rank + 1];
            c.all_reduce_f64(&mut v)
        });
        for r in out {
            let msg = r.expect_err("must fail").to_string();
            assert!(msg.contains("out of step"), "{msg}");
        }
    }

    impl InProcess {
        fn barrier_host(&self) -> Result<()> {
            HostCollective::all_reduce_f64(self, &mut [])
        }
    }
}
