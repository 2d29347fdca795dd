//! A rank that joins the rendezvous but never reaches NCCL (it died, or hangs before
//! ncclCommInitRank) does not hold the others forever: their NCCL start fails within the
//! job's timeout with an error that says what happened. Needs an NVIDIA GPU and NCCL
//! (`cargo test -- --ignored` there, with libnccl.so on LD_LIBRARY_PATH).

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use temper_core::{CudaBackend, DType};
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
        ctrl.broadcast_bytes(&mut id)
            .expect("rank 1 receives the id");
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
