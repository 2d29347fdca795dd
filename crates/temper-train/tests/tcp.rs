//! Rendezvous and collectives over TCP, with ranks as threads on localhost: the sums equal
//! the in-process ones bit for bit, every wait ends with an error that names who is missing,
//! and a rank that goes away is reported by number.

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use temper_train::dist::rendezvous::rendezvous;
use temper_train::{HostCollective, InProcess, RendezvousConfig, Tcp};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn cfg(rank: usize, world: usize, port: u16, timeout: Duration) -> RendezvousConfig {
    RendezvousConfig {
        rank,
        world,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout,
    }
}

/// Runs `f(rank)` on `world` threads; fails the test if any has not returned in 60 s.
fn on_threads<T: Send + 'static>(
    world: usize,
    f: impl Fn(usize) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let (tx, rx) = mpsc::channel();
    for rank in 0..world {
        let (f, tx) = (f.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((rank, f(rank)));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: Vec<Option<T>> = (0..world).map(|_| None).collect();
    for _ in 0..world {
        let left = deadline.saturating_duration_since(Instant::now());
        let (rank, out) = rx.recv_timeout(left).expect("a rank hangs");
        got[rank] = Some(out);
    }
    got.into_iter().map(|o| o.expect("every rank")).collect()
}

/// Some awkward values per rank: the rank-order f64 sum of them is not what f32 gives.
fn inputs(rank: usize) -> (Vec<f32>, Vec<f64>) {
    let f: Vec<f32> = (0..1000)
        .map(|i| ((i * 7 + rank * 13) % 17) as f32 * 1e-3 + 1.0 / (rank as f32 + 3.0))
        .collect();
    (f, vec![rank as f64 + 0.25, 1e16, -(rank as f64)])
}

type Outputs = (Vec<f32>, Vec<f64>, Vec<u8>);

fn exercise(c: &dyn HostCollective) -> Outputs {
    let (mut f, mut d) = inputs(c.rank());
    c.all_reduce_f32(&mut f).expect("f32");
    c.all_reduce_f64(&mut d).expect("f64");
    let mut b = vec![c.rank() as u8; 128 + c.rank()];
    c.broadcast_bytes(&mut b).expect("broadcast");
    (f, d, b)
}

#[test]
fn tcp_sums_equal_in_process_sums_bit_for_bit() {
    let port = free_port();
    let over_tcp: Vec<Outputs> = on_threads(3, move |rank| {
        let c = Tcp::connect(&cfg(rank, 3, port, Duration::from_secs(30))).expect("rendezvous");
        exercise(&c)
    });
    let groups = std::sync::Arc::new(std::sync::Mutex::new(
        InProcess::group(3, Duration::from_secs(30))
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    ));
    let in_process: Vec<Outputs> = on_threads(3, move |rank| {
        let c = groups.lock().expect("lock")[rank].take().expect("handle");
        exercise(&c)
    });
    assert_eq!(over_tcp, in_process);
    for (f, _, b) in &over_tcp {
        assert_eq!(f, &over_tcp[0].0);
        assert_eq!(b, &vec![0u8; 128]);
    }
}

#[test]
fn rank_zero_names_the_ranks_that_never_came() {
    let err = rendezvous(&cfg(0, 3, free_port(), Duration::from_millis(300)))
        .err()
        .expect("times out")
        .to_string();
    assert!(err.contains("ranks [1, 2]"), "{err}");
    assert!(err.contains("dist_timeout"), "{err}");
}

#[test]
fn a_rank_with_no_rank_zero_says_where_it_looked() {
    let port = free_port();
    let err = rendezvous(&cfg(1, 2, port, Duration::from_millis(300)))
        .err()
        .expect("times out")
        .to_string();
    assert!(
        err.contains(&format!("could not reach rank 0 at 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn a_mismatched_world_size_is_refused_on_both_sides() {
    let port = free_port();
    let out = on_threads(2, move |rank| {
        // Rank 1 believes the job has 3 ranks.
        let world = if rank == 0 { 2 } else { 3 };
        rendezvous(&cfg(rank, world, port, Duration::from_secs(10)))
            .err()
            .map(|e| e.to_string())
    });
    for e in out {
        let e = e.expect("refused");
        assert!(e.contains("WORLD_SIZE 3 but rank 0 has 2"), "{e}");
    }
}

#[test]
fn a_rank_that_goes_away_is_named() {
    let port = free_port();
    let out = on_threads(3, move |rank| {
        let c = Tcp::connect(&cfg(rank, 3, port, Duration::from_secs(30))).expect("rendezvous");
        if rank == 2 {
            return None; // drops its connection, as a crashed process would
        }
        Some(c.all_reduce_f64(&mut [1.0]).err().map(|e| e.to_string()))
    });
    let rank0 = out[0].clone().flatten().expect("rank 0 fails");
    assert!(rank0.contains("rank 2 closed its connection"), "{rank0}");
    // Rank 1 waits on rank 0, which has stopped: it learns that rank 0 went away.
    let rank1 = out[1].clone().flatten().expect("rank 1 fails");
    assert!(rank1.contains("rank 0 closed its connection"), "{rank1}");
}
