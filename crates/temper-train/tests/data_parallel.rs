//! Data parallelism on the CPU backend with ranks as threads ([`InProcess`]): N ranks take
//! the same steps as one process with the same global batch, all ranks stop together, and a
//! lost rank makes the others fail instead of hanging. Every multi-rank run goes through
//! `on_ranks`, which fails the test (instead of hanging it) when a rank never returns.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use temper_core::{Backend, CpuBackend};
use temper_data::PackedRow;
use temper_model::{LoraParams, Model};
use temper_train::{
    train, train_with, Collective, HostCollective, InProcess, Observer, Silent, TrainError,
    TrainSettings, TrainSummary,
};

mod common;
use common::{losses, rows};

fn settings(out: &Path, max_steps: u64, micro: usize, accum: usize) -> TrainSettings {
    TrainSettings {
        warmup_steps: Some(1),
        micro_batch_size: micro,
        grad_accum: accum,
        seed: 11,
        ..common::settings(out, max_steps)
    }
}

type Model0 = Arc<Model<CpuBackend>>;

fn model() -> Model0 {
    Arc::new(common::model())
}

fn values<B: Backend>(be: &B, lora: &LoraParams<B>) -> Vec<f32> {
    lora.params
        .iter()
        .flat_map(|p| be.download(&p.value).expect("download"))
        .collect()
}

/// Runs `f` on `world` rank threads and returns their results in rank order. Fails the
/// test when any rank has not returned within `limit`: a hang is a failure, not a wait.
fn on_ranks<T: Send + 'static>(
    world: usize,
    limit: Duration,
    f: impl Fn(InProcess) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    for c in InProcess::group(world, Duration::from_secs(60)) {
        let (f, tx) = (f.clone(), tx.clone());
        std::thread::spawn(move || {
            let rank = HostCollective::rank(&c);
            let out = f(c);
            let _ = tx.send((rank, out));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut got: Vec<Option<T>> = (0..world).map(|_| None).collect();
    for _ in 0..world {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((rank, out)) => got[rank] = Some(out),
            Err(_) => {
                let missing: Vec<usize> = (0..world).filter(|&r| got[r].is_none()).collect();
                panic!("ranks {missing:?} did not return within {limit:?}: they hang");
            }
        }
    }
    got.into_iter().map(|o| o.expect("every rank")).collect()
}

type RankResult = Result<(Vec<f32>, TrainSummary), TrainError>;

/// Trains on `world` ranks, each running `settings` (per-rank batch) with its collective
/// made by `wrap`; returns each rank's final parameters.
fn train_ranks<C: Collective<CpuBackend> + 'static>(
    world: usize,
    model: &Model0,
    data: &Arc<Vec<PackedRow>>,
    s: &TrainSettings,
    wrap: impl Fn(InProcess) -> C + Send + Sync + 'static,
    observer: impl Fn(usize) -> Box<dyn Observer> + Send + Sync + 'static,
) -> Vec<RankResult> {
    let (model, data, s) = (model.clone(), data.clone(), s.clone());
    on_ranks(world, Duration::from_secs(300), move |c| {
        let rank = HostCollective::rank(&c);
        let coll = wrap(c);
        let mut obs = observer(rank);
        train_with(&model, &data, &s, &mut *obs, &coll)
            .map(|(lora, summary)| (values(&*model.be, &lora), summary))
    })
}

fn silent(_: usize) -> Box<dyn Observer> {
    Box::new(Silent)
}

/// (worst |a-b| / max(|b|, 1e-3) over elements, ||a-b|| / ||b||).
fn differences(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut worst, mut diff2, mut norm2) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        worst = worst.max((x - y).abs() / y.abs().max(1e-3));
        diff2 += (x - y).powi(2);
        norm2 += y.powi(2);
    }
    (worst, (diff2 / norm2).sqrt())
}

#[test]
fn three_ranks_take_the_steps_of_one_process_with_the_same_global_batch() {
    let model = model();
    let data = Arc::new(rows(200));
    // One process: 6 micro-batches of 2 rows per step.
    let one = tempfile::tempdir().expect("tempdir");
    let (lora, _) =
        train(&model, &data, &settings(one.path(), 4, 2, 6), &mut Silent).expect("one process");
    let expected = values(&*model.be, &lora);

    // Three ranks: 2 micro-batches of 2 rows each, the same 12 rows per step. Small buckets,
    // so gradients are summed in several.
    let three = tempfile::tempdir().expect("tempdir");
    let s = settings(three.path(), 4, 2, 2);
    let results = train_ranks(
        3,
        &model,
        &data,
        &s,
        |c| c.with_bucket_bytes(64 << 10),
        silent,
    );
    let per_rank: Vec<Vec<f32>> = results
        .into_iter()
        .map(|r| r.expect("rank trains").0)
        .collect();
    // Every rank holds the same parameters, bit for bit.
    assert_eq!(per_rank[0], per_rank[1]);
    assert_eq!(per_rank[0], per_rank[2]);
    let (worst, rel) = differences(&per_rank[0], &expected);
    println!("world 3 vs world 1 after 4 steps: relative L2 difference {rel:.2e}, worst element {worst:.2e}");
    assert!(rel < 1e-5, "world 3 differs from world 1: {rel:.2e}");

    // Rank 0 alone wrote the metrics: one line per step, the global mean loss.
    let (l1, l3) = (losses(one.path()), losses(three.path()));
    assert_eq!(l3.len(), 4);
    for (a, b) in l1.iter().zip(&l3) {
        assert!((a - b).abs() < 1e-5 * a.abs(), "loss {a} vs {b}");
    }
}

#[test]
fn two_ranks_of_two_rows_equal_one_process_of_four() {
    let model = model();
    let data = Arc::new(rows(100));
    let one = tempfile::tempdir().expect("tempdir");
    let mut s1 = settings(one.path(), 3, 4, 1);
    // Dropout masks depend on how rows are grouped into micro-batches: turn it off.
    s1.lora.dropout = 0.0;
    let (lora, _) = train(&model, &data, &s1, &mut Silent).expect("one process");
    let expected = values(&*model.be, &lora);

    let two = tempfile::tempdir().expect("tempdir");
    let mut s2 = settings(two.path(), 3, 2, 1);
    s2.lora.dropout = 0.0;
    let got = train_ranks(2, &model, &data, &s2, |c| c, silent);
    let got = got.into_iter().next().expect("rank 0").expect("trains").0;
    let (worst, rel) = differences(&got, &expected);
    println!("world 2 x 2 rows vs world 1 x 4 rows: relative L2 difference {rel:.2e}, worst element {worst:.2e}");
    assert!(rel < 1e-5, "world 2 differs from world 1: {rel:.2e}");
}

/// Asks to stop (as Ctrl-C does) at one step, on one rank only.
struct StopAt {
    step: u64,
    seen: u64,
}

impl Observer for StopAt {
    fn stop_requested(&mut self) -> bool {
        self.seen += 1;
        self.seen == self.step
    }
}

#[test]
fn a_stop_on_one_rank_stops_every_rank_after_the_same_step() {
    let model = model();
    let data = Arc::new(rows(60));
    let out = tempfile::tempdir().expect("tempdir");
    let s = settings(out.path(), 6, 1, 1);
    let results = train_ranks(
        3,
        &model,
        &data,
        &s,
        |c| c,
        |rank| -> Box<dyn Observer> {
            if rank == 2 {
                Box::new(StopAt { step: 2, seen: 0 })
            } else {
                Box::new(Silent)
            }
        },
    );
    for r in results {
        let (_, summary) = r.expect("a stop is not an error");
        assert_eq!(summary.steps, 2);
        assert!(summary.interrupted);
    }
    // Rank 0 saved where they stopped, so the run can resume.
    assert!(out.path().join("checkpoint-2/trainer_state.json").exists());
    assert!(out.path().join("adapter_model.safetensors").exists());
    assert_eq!(losses(out.path()).len(), 2);
}

/// A collective that misbehaves on one rank at one step, as a failing GPU or process would.
struct Faulty {
    inner: InProcess,
    fault: Fault,
    pair_calls: std::sync::atomic::AtomicUsize,
}

#[derive(Clone, Copy)]
enum Fault {
    /// This rank's summed loss is NaN at step 2.
    NanLossAtStep2,
    /// This rank fails (and leaves) at step 2.
    DieAtStep2,
}

impl HostCollective for Faulty {
    fn rank(&self) -> usize {
        HostCollective::rank(&self.inner)
    }
    fn world(&self) -> usize {
        HostCollective::world(&self.inner)
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> temper_train::Result<()> {
        // Each step makes two exchanges of two values: [loss tokens, tokens], then
        // [loss sum, stop]. The fourth such call is step 2's loss.
        if values.len() == 2 {
            let n = 1 + self
                .pair_calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n == 4 {
                match self.fault {
                    Fault::NanLossAtStep2 => values[0] = f64::NAN,
                    Fault::DieAtStep2 => {
                        return Err(TrainError::Distributed("simulated failure".into()))
                    }
                }
            }
        }
        HostCollective::all_reduce_f64(&self.inner, values)
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> temper_train::Result<()> {
        HostCollective::all_reduce_f32(&self.inner, values)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> temper_train::Result<()> {
        HostCollective::broadcast_bytes(&self.inner, bytes)
    }
}

fn faulty_on_rank_1(fault: Fault) -> impl Fn(InProcess) -> Box<dyn HostCollective> {
    move |c| -> Box<dyn HostCollective> {
        if HostCollective::rank(&c) == 1 {
            Box::new(Faulty {
                inner: c,
                fault,
                pair_calls: Default::default(),
            })
        } else {
            Box::new(c)
        }
    }
}

#[test]
fn a_nan_loss_on_one_rank_stops_every_rank() {
    let model = model();
    let data = Arc::new(rows(60));
    let out = tempfile::tempdir().expect("tempdir");
    let s = settings(out.path(), 6, 1, 1);
    let results = train_ranks(
        3,
        &model,
        &data,
        &s,
        faulty_on_rank_1(Fault::NanLossAtStep2),
        silent,
    );
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Err(TrainError::NonFinite { step, .. }) => assert_eq!(step, 2, "rank {rank}"),
            Err(e) => panic!("rank {rank}: unexpected error {e}"),
            Ok(_) => panic!("rank {rank} trained on past a NaN loss"),
        }
    }
}

#[test]
fn a_rank_that_dies_makes_the_others_fail_with_its_name() {
    let model = model();
    let data = Arc::new(rows(60));
    let out = tempfile::tempdir().expect("tempdir");
    let s = settings(out.path(), 6, 1, 1);
    let results = train_ranks(
        3,
        &model,
        &data,
        &s,
        faulty_on_rank_1(Fault::DieAtStep2),
        silent,
    );
    let msgs: Vec<String> = results
        .into_iter()
        .map(|r| r.expect_err("no rank finishes").to_string())
        .collect();
    assert!(msgs[1].contains("simulated failure"), "{}", msgs[1]);
    for r in [0, 2] {
        assert!(msgs[r].contains("rank 1 stopped"), "rank {r}: {}", msgs[r]);
    }
}

#[test]
fn ranks_with_different_data_refuse_to_start() {
    let model = model();
    let out = tempfile::tempdir().expect("tempdir");
    let s = settings(out.path(), 2, 1, 1);
    // The same number of rows, different contents.
    let a = Arc::new(rows(60));
    let mut b = (*a).clone();
    b.reverse();
    let b = Arc::new(b);
    let results = on_ranks(2, Duration::from_secs(120), move |c| {
        let data = if HostCollective::rank(&c) == 0 {
            &a
        } else {
            &b
        };
        train_with(&model, data, &s, &mut Silent, &c).map(|_| ())
    });
    for r in results {
        let msg = r.expect_err("must refuse").to_string();
        assert!(msg.contains("rank"), "{msg}");
    }
}
