//! Collectives between processes over the rendezvous connections, through rank 0: every
//! rank sends its values to rank 0, rank 0 sums them in rank order and sends the sum back.
//! It carries the CPU backend's gradients (small LoRA tensors) and, beside NCCL, the
//! per-step scalars and stop decisions.
//!
//! Frame (little-endian): tag (u8), count (u64), then `count` values (f32 or f64) or bytes.
//! Tag 255 carries an error message from rank 0, so every rank fails with the same reason.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::dist::collective::{sum_in_rank_order_f32, sum_in_rank_order_f64, HostCollective};
use crate::dist::rendezvous::{rendezvous, Peers, RendezvousConfig};
use crate::error::{Result, TrainError};

const TAG_F32: u8 = 1;
const TAG_F64: u8 = 2;
const TAG_BYTES: u8 = 3;
const TAG_ERROR: u8 = 255;

/// A rank of a job joined over TCP.
pub struct Tcp {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Mutex<Vec<(usize, TcpStream)>>,
}

fn dist(msg: String) -> TrainError {
    TrainError::Distributed(msg)
}

impl Tcp {
    /// Rendezvous, then collectives over the same connections.
    pub fn connect(cfg: &RendezvousConfig) -> Result<Tcp> {
        Tcp::from_peers(rendezvous(cfg)?)
    }

    pub fn from_peers(p: Peers) -> Result<Tcp> {
        for (r, s) in &p.links {
            let t = Some(p.timeout.max(Duration::from_millis(1)));
            s.set_read_timeout(t)
                .and_then(|_| s.set_write_timeout(t))
                .map_err(|e| dist(format!("rank {}: connection to rank {r}: {e}", p.rank)))?;
        }
        Ok(Tcp {
            rank: p.rank,
            world: p.world,
            timeout: p.timeout,
            links: Mutex::new(p.links),
        })
    }

    fn links(&self) -> Result<MutexGuard<'_, Vec<(usize, TcpStream)>>> {
        self.links
            .lock()
            .map_err(|_| dist("a thread panicked inside a collective".into()))
    }

    /// What a failed read or write from `peer` means, in words.
    fn io_error(&self, peer: usize, what: &str, e: std::io::Error) -> TrainError {
        use std::io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => dist(format!(
                "rank {}: rank {peer} sent nothing for {:.0} s during {what}: it may be hung; raise dist_timeout if it is only slow",
                self.rank,
                self.timeout.as_secs_f64()
            )),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => dist(format!(
                "rank {}: rank {peer} closed its connection during {what}: it stopped or failed (see its output)",
                self.rank
            )),
            _ => dist(format!(
                "rank {}: connection to rank {peer} during {what}: {e}",
                self.rank
            )),
        }
    }

    /// Rank 0: reads every rank's frame in rank order, combines them with its own, sends the
    /// result back. Others: send, then read the result.
    fn exchange(&self, tag: u8, mine: Vec<u8>, count: usize, what: &str) -> Result<Vec<u8>> {
        if self.world == 1 {
            return Ok(mine);
        }
        let mut links = self.links()?;
        if self.rank != 0 {
            let (peer, s) = &mut links[0];
            let peer = *peer;
            write_frame(s, tag, count, &mine).map_err(|e| self.io_error(peer, what, e))?;
            let (t, _, body) = read_frame(s).map_err(|e| self.io_error(peer, what, e))?;
            if t == TAG_ERROR {
                return Err(dist(String::from_utf8_lossy(&body).into_owned()));
            }
            return Ok(body);
        }
        let mut parts = vec![mine];
        let mut problem = None;
        for (peer, s) in links.iter_mut() {
            let (t, n, body) = read_frame(s).map_err(|e| self.io_error(*peer, what, e))?;
            if problem.is_none() && (t != tag || (tag != TAG_BYTES && n != count)) {
                problem = Some(format!(
                    "the ranks are out of step: rank 0 is in {what} but rank {peer} sent {} (rank 0 has {count} values, rank {peer} {n}); do all ranks run the same config and data?",
                    describe(t)
                ));
            }
            parts.push(body);
        }
        let (reply_tag, reply) = match &problem {
            Some(msg) => (TAG_ERROR, msg.as_bytes().to_vec()),
            None => (tag, combine(tag, &parts, count)),
        };
        for (peer, s) in links.iter_mut() {
            write_frame(s, reply_tag, count, &reply).map_err(|e| self.io_error(*peer, what, e))?;
        }
        match problem {
            Some(msg) => Err(dist(msg)),
            None => Ok(reply),
        }
    }
}

fn describe(tag: u8) -> &'static str {
    match tag {
        TAG_F32 => "an all_reduce of f32",
        TAG_F64 => "an all_reduce of f64",
        TAG_BYTES => "a broadcast",
        _ => "an unknown message",
    }
}

/// The rank-order sum of the parts (as bytes), or rank 0's bytes for a broadcast.
fn combine(tag: u8, parts: &[Vec<u8>], count: usize) -> Vec<u8> {
    match tag {
        TAG_F32 => {
            let vals: Vec<Vec<f32>> = parts.iter().map(|p| from_le_f32(p)).collect();
            let views: Vec<&[f32]> = vals.iter().map(|v| &v[..]).collect();
            let mut out = vec![0f32; count];
            sum_in_rank_order_f32(&views, &mut out);
            out.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        TAG_F64 => {
            let vals: Vec<Vec<f64>> = parts.iter().map(|p| from_le_f64(p)).collect();
            let views: Vec<&[f64]> = vals.iter().map(|v| &v[..]).collect();
            let mut out = vec![0f64; count];
            sum_in_rank_order_f64(&views, &mut out);
            out.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        _ => parts[0].clone(),
    }
}

fn from_le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn from_le_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a)
        })
        .collect()
}

fn write_frame(s: &mut TcpStream, tag: u8, count: usize, body: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 17];
    head[0] = tag;
    head[1..9].copy_from_slice(&(count as u64).to_le_bytes());
    head[9..17].copy_from_slice(&(body.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(body)?;
    s.flush()
}

/// (tag, count, body).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, usize, Vec<u8>)> {
    let mut head = [0u8; 17];
    s.read_exact(&mut head)?;
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[1..9]);
    let count = u64::from_le_bytes(n) as usize;
    n.copy_from_slice(&head[9..17]);
    let len = u64::from_le_bytes(n) as usize;
    // A frame is at most one gradient bucket or a short message; refuse absurd lengths
    // (a stray client) instead of allocating them.
    if len > 1 << 34 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is not a temper message"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head[0], count, body))
}

impl HostCollective for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let sum = from_le_f64(&self.exchange(TAG_F64, bytes, values.len(), "an all_reduce")?);
        values.copy_from_slice(&sum);
        Ok(())
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let sum = from_le_f32(&self.exchange(TAG_F32, bytes, values.len(), "an all_reduce")?);
        values.copy_from_slice(&sum);
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        // Every rank sends a frame, so rank 0 knows all are in step; only rank 0's has bytes.
        let mine = if self.rank == 0 {
            std::mem::take(bytes)
        } else {
            Vec::new()
        };
        let n = mine.len();
        *bytes = self.exchange(TAG_BYTES, mine, n, "a broadcast")?;
        Ok(())
    }
}
