//! NCCL between ranks on threads of one process. A rank that joins the rendezvous but never
//! reaches NCCL (it died, or hangs before ncclCommInitRank) does not hold the others forever:
//! their NCCL start fails within the job's timeout with an error that says what happened.
//! And what sending a whole quantised 7B base between two GPUs would cost: a sum of that many
//! bytes (which moves at least as much as a broadcast from rank 0 would), timed and printed.
//! Need NVIDIA GPUs and NCCL (`cargo test -- --ignored` there, with libnccl.so on
//! LD_LIBRARY_PATH).

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use std::time::Instant;

use temper_core::{Backend, CudaBackend, DType};
use temper_train::Collective;
use temper_train::{HostCollective, Nccl, RendezvousConfig, Tcp};

fn cfg(rank: usize, port: u16) -> RendezvousConfig {
    RendezvousConfig {
        rank,
        world: 2,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout: Duration::from_secs(60),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and NCCL: cargo test -- --ignored"]
fn nccl_start_fails_within_the_timeout_when_a_rank_never_joins_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // Rank 1 joins the control plane, takes the NCCL id, then stays away from NCCL until
    // rank 0 has given up (the channel closes when the test ends).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let silent = std::thread::spawn(move || {
        let ctrl = Tcp::connect(&cfg(1, port)).expect("rank 1 rendezvous");
        let mut id = Vec::new();
        HostCollective::broadcast_bytes(&ctrl, &mut id).expect("rank 1 receives the id");
        assert_eq!(id.len(), 128);
        let _ = done_rx.recv();
    });
    let be = CudaBackend::with_dtype(0, DType::F32).unwrap_or_else(|e| panic!("CUDA: {e}"));
    let ctrl = Tcp::connect(&cfg(0, port)).expect("rank 0 rendezvous");
    let err = Nccl::new(&be, ctrl, Duration::from_secs(5))
        .err()
        .expect("NCCL started without rank 1");
    let msg = err.to_string();
    assert!(msg.contains("rank 0"), "{msg}");
    assert!(msg.contains("ncclCommInitRank"), "{msg}");
    assert!(msg.contains("did not finish within 5 s"), "{msg}");
    println!("{msg}");
    drop(done_tx);
    silent.join().expect("rank 1 thread");
}

/// Sums a buffer the size of Llama-2-7B's NF4 + double-quant base (3.63 GiB, or
/// TEMPER_NCCL_TEST_BYTES) across GPUs 0 and 1, checks the sums and prints the time.
#[test]
#[ignore = "needs two NVIDIA GPUs and NCCL: cargo test -- --ignored"]
fn nccl_sums_a_quantised_7b_base_worth_of_bytes_between_two_gpus() {
    let bytes: usize = std::env::var("TEMPER_NCCL_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_901_000_000);
    let n = bytes / 4;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let be = CudaBackend::with_dtype(rank, DType::F32)
                    .unwrap_or_else(|e| panic!("CUDA on GPU {rank}: {e}"));
                let ctrl = Tcp::connect(&cfg(rank, port)).expect("rendezvous");
                let nccl = Nccl::new(&be, ctrl, Duration::from_secs(120)).expect("NCCL");
                let mut buf = be.zeros(n).expect("alloc");
                be.fill(&mut buf, rank as f32 + 1.0).expect("fill");
                // A first small sum warms NCCL's channels up.
                let mut warm = be.zeros(1 << 20).expect("alloc");
                nccl.all_reduce_bufs(&be, &mut [&mut warm])
                    .expect("warm-up");
                be.synchronize().expect("sync");
                let t0 = Instant::now();
                nccl.all_reduce_bufs(&be, &mut [&mut buf])
                    .expect("all-reduce");
                be.synchronize().expect("sync");
                let secs = t0.elapsed().as_secs_f64();
                let host = be.download(&buf).expect("download");
                let wrong = host.iter().filter(|&&v| v != 3.0).count();
                assert_eq!(wrong, 0, "rank {rank}: {wrong} of {n} sums are not 1 + 2");
                secs
            })
        })
        .collect();
    let secs: Vec<f64> = ranks
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect();
    let worst = secs.iter().cloned().fold(0.0, f64::max);
    println!(
        "all-reduce of {:.2} GiB between 2 GPUs: {worst:.3} s ({:.0} GB/s of buffer)",
        bytes as f64 / (1u64 << 30) as f64,
        bytes as f64 / worst / 1e9
    );
}
