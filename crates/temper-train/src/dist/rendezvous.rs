//! Rendezvous: rank 0 listens on MASTER_ADDR:MASTER_PORT and every other rank connects to it,
//! as torchrun's variables describe the job. The result is a star of TCP connections (rank 0
//! holds one per rank) that [`crate::Tcp`] runs collectives over and that carries the NCCL
//! unique id. Every wait has a deadline and fails with the ranks it was waiting for.
//!
//! Handshake (little-endian): a rank sends `TEMPERDP`, protocol version (u32), its rank (u32)
//! and the world size (u32); rank 0 answers one byte, 0 = accepted, else 1 followed by a
//! length-prefixed (u32) UTF-8 reason.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"TEMPERDP";
const VERSION: u32 = 1;

/// Where and how the ranks meet.
#[derive(Clone, Debug)]
pub struct RendezvousConfig {
    pub rank: usize,
    pub world: usize,
    /// Rank 0's host name or address (MASTER_ADDR).
    pub master_addr: String,
    /// MASTER_PORT.
    pub master_port: u16,
    /// How long to wait for the other ranks, here and in every later exchange.
    pub timeout: Duration,
}

/// The connections of one rank: rank 0 holds `(rank, stream)` for ranks 1..world in rank
/// order; every other rank holds `(0, stream)`.
pub struct Peers {
    pub rank: usize,
    pub world: usize,
    pub links: Vec<(usize, TcpStream)>,
    pub timeout: Duration,
}

fn dist(msg: String) -> TrainError {
    TrainError::Distributed(msg)
}

/// Meets the other ranks. Rank 0 returns once all `world - 1` have connected; the others
/// once rank 0 has accepted them.
pub fn rendezvous(cfg: &RendezvousConfig) -> Result<Peers> {
    if cfg.world == 0 || cfg.rank >= cfg.world {
        return Err(dist(format!(
            "RANK {} is not below WORLD_SIZE {}: each rank needs RANK in 0..WORLD_SIZE",
            cfg.rank, cfg.world
        )));
    }
    let links = if cfg.world == 1 {
        Vec::new()
    } else if cfg.rank == 0 {
        accept_all(cfg)?
    } else {
        vec![(0, connect(cfg)?)]
    };
    Ok(Peers {
        rank: cfg.rank,
        world: cfg.world,
        links,
        timeout: cfg.timeout,
    })
}

fn endpoint(cfg: &RendezvousConfig) -> String {
    format!("{}:{}", cfg.master_addr, cfg.master_port)
}

/// Rank 0: listen, then accept and check a connection from every other rank.
fn accept_all(cfg: &RendezvousConfig) -> Result<Vec<(usize, TcpStream)>> {
    let listener = listen(cfg)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| dist(format!("rank 0: {}: {e}", endpoint(cfg))))?;
    let deadline = Instant::now() + cfg.timeout;
    let mut links: Vec<Option<TcpStream>> = (0..cfg.world).map(|_| None).collect();
    while links[1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, from)) => {
                if let Some((rank, stream)) = admit(cfg, stream, from, &links, deadline)? {
                    links[rank] = Some(stream);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> =
                        (1..cfg.world).filter(|&r| links[r].is_none()).collect();
                    return Err(dist(format!(
                        "rank 0 waited {:.0} s at {} for ranks {missing:?} of WORLD_SIZE {}: start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or raise dist_timeout",
                        cfg.timeout.as_secs_f64(),
                        endpoint(cfg),
                        cfg.world
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(dist(format!("rank 0: accepting at {}: {e}", endpoint(cfg)))),
        }
    }
    Ok(links
        .into_iter()
        .enumerate()
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .collect())
}

/// Binds MASTER_ADDR:MASTER_PORT; when MASTER_ADDR is not an address of this machine (a
/// name the others resolve differently, a NAT), binds every interface on that port.
fn listen(cfg: &RendezvousConfig) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = (cfg.master_addr.as_str(), cfg.master_port)
        .to_socket_addrs()
        .map_err(|e| {
            dist(format!(
                "rank 0: MASTER_ADDR `{}` does not resolve: {e}",
                cfg.master_addr
            ))
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(dist(format!(
                    "rank 0 cannot listen on {}: the port is in use (another job?); choose another MASTER_PORT",
                    endpoint(cfg)
                )))
            }
            Err(e) => last = Some(e),
        }
    }
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, cfg.master_port)).map_err(|e| {
        dist(format!(
            "rank 0 cannot listen on {} ({}) nor on port {} of every interface: {e}; check MASTER_ADDR and MASTER_PORT",
            endpoint(cfg),
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into()),
            cfg.master_port
        ))
    })
}

/// Reads and checks one rank's hello. Returns None (after telling it why) for a connection
/// that is not a rank of this job.
fn admit(
    cfg: &RendezvousConfig,
    mut stream: TcpStream,
    from: SocketAddr,
    links: &[Option<TcpStream>],
    deadline: Instant,
) -> Result<Option<(usize, TcpStream)>> {
    let io = |e: std::io::Error| dist(format!("rank 0: handshake with {from}: {e}"));
    stream.set_nonblocking(false).map_err(io)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    stream.set_read_timeout(Some(left)).map_err(io)?;
    let mut hello = [0u8; 20];
    if stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
        // Not one of ours (a port scanner, a stale client): ignore it.
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]]);
    let (version, rank, world) = (word(8), word(12) as usize, word(16) as usize);
    let refusal = if version != VERSION {
        Some(format!(
            "a rank from {from} speaks rendezvous version {version}, rank 0 speaks {VERSION}: run the same temper binary on every rank"
        ))
    } else if world != cfg.world {
        Some(format!(
            "rank {rank} (from {from}) has WORLD_SIZE {world} but rank 0 has {}: give every rank the same WORLD_SIZE",
            cfg.world
        ))
    } else if rank == 0 || rank >= cfg.world {
        Some(format!(
            "a rank from {from} says RANK {rank}, outside 1..{}: each rank needs its own RANK below WORLD_SIZE",
            cfg.world
        ))
    } else if links[rank].is_some() {
        Some(format!(
            "two processes say RANK {rank} (the second from {from}): give each rank its own RANK"
        ))
    } else {
        None
    };
    match refusal {
        None => {
            stream.write_all(&[0]).map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            Ok(Some((rank, stream)))
        }
        Some(msg) => {
            let mut reply = vec![1u8];
            reply.extend_from_slice(&(msg.len() as u32).to_le_bytes());
            reply.extend_from_slice(msg.as_bytes());
            // The rank learns why it was refused; rank 0 stops too, as the job is misconfigured.
            let _ = stream.write_all(&reply);
            Err(dist(msg))
        }
    }
}

/// Any rank but 0: connect to rank 0 (retrying while it is not yet listening) and say hello.
fn connect(cfg: &RendezvousConfig) -> Result<TcpStream> {
    let deadline = Instant::now() + cfg.timeout;
    let mut last_error = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(dist(format!(
                "rank {} could not reach rank 0 at {} within {:.0} s (last error: {last_error}): start rank 0 with the same MASTER_ADDR and MASTER_PORT, or raise dist_timeout",
                cfg.rank,
                endpoint(cfg),
                cfg.timeout.as_secs_f64()
            )));
        }
        let addrs = match (cfg.master_addr.as_str(), cfg.master_port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                last_error = format!("MASTER_ADDR `{}` does not resolve: {e}", cfg.master_addr);
                Vec::new()
            }
        };
        for a in addrs {
            let wait = (deadline - now).min(Duration::from_secs(5));
            match TcpStream::connect_timeout(&a, wait) {
                Ok(s) => return hello(cfg, s),
                Err(e) => last_error = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hello(cfg: &RendezvousConfig, mut s: TcpStream) -> Result<TcpStream> {
    let io = |e: std::io::Error| {
        dist(format!(
            "rank {}: handshake with rank 0 at {}: {e}",
            cfg.rank,
            endpoint(cfg)
        ))
    };
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(cfg.timeout)).map_err(io)?;
    let mut msg = MAGIC.to_vec();
    for v in [VERSION, cfg.rank as u32, cfg.world as u32] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&msg).map_err(io)?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status).map_err(io)?;
    if status[0] != 0 {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).map_err(io)?;
        let mut why = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut why).map_err(io)?;
        return Err(dist(format!(
            "rank 0 refused rank {}: {}",
            cfg.rank,
            String::from_utf8_lossy(&why)
        )));
    }
    Ok(s)
}
