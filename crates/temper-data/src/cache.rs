//! The on-disk cache of tokenised examples, keyed by a hash of everything that decides
//! them: the data files' bytes and paths, tokenizer.json, tokenizer_config.json, the
//! chat template, the row format, the mask options and temper-data's version.
//!
//! File layout (little-endian): magic `TEMPRC02`, rows_read u64, skipped u64,
//! examples u64, then every example's length (u32), then all token ids (u32), then one
//! byte per token (1 = trained), then a 16-byte checksum of everything before it.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::tokenize::Example;
use crate::IGNORE_INDEX;

const MAGIC: &[u8; 8] = b"TEMPRC02";

/// A stable 128-bit hash (two FNV-1a-style 64-bit lanes over 8-byte words), written
/// here so cache keys do not change with the Rust or crate versions.
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher {
    a: u64,
    b: u64,
}

impl KeyHasher {
    pub fn new() -> Self {
        KeyHasher {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
        }
    }

    fn word(&mut self, w: u64) {
        self.a = (self.a ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        self.b = (self.b ^ w.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    /// Adds a length-prefixed byte string.
    pub fn bytes(&mut self, data: &[u8]) {
        self.word(data.len() as u64);
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(last));
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn hex(&self) -> String {
        let mix = |x: u64| {
            let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^ (x >> 33)
        };
        format!("{:016x}{:016x}", mix(self.a), mix(self.b ^ self.a))
    }
}

/// What a cache file holds.
#[derive(Debug, Default)]
pub(crate) struct Cached {
    pub rows_read: usize,
    pub skipped: usize,
    pub examples: Vec<Example>,
}

pub(crate) fn path_for(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.bin"))
}

/// Reads a cache file; `None` when it is missing, not a complete cache file, or damaged
/// (its sizes disagree with its length, or its checksum with its bytes): the caller then
/// rebuilds it.
pub(crate) fn load(path: &Path) -> Option<Cached> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    parse(&bytes)
}

/// The cache file `bytes`, checked: every size is bounded by the file's length before
/// anything is allocated, and the checksum must match.
pub(crate) fn parse(bytes: &[u8]) -> Option<Cached> {
    const HEADER: usize = 8 + 3 * 8;
    const SUM: usize = 16;
    if bytes.len() < HEADER + SUM || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - SUM);
    if checksum(body) != sum {
        return None;
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(b)
    };
    let (rows_read, skipped, n) = (u64_at(0), u64_at(1), u64_at(2));
    let left = (body.len() - HEADER) as u64;
    // Each example takes 4 bytes of length at least.
    if n.checked_mul(4)? > left {
        return None;
    }
    let n = n as usize;
    let lens: Vec<usize> = body[HEADER..HEADER + 4 * n]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l))?;
    // Then 4 bytes of id and 1 byte of flag per token, and nothing else.
    if total.checked_mul(5)? != body.len() - HEADER - 4 * n {
        return None;
    }
    let ids_at = HEADER + 4 * n;
    let flags = &body[ids_at + 4 * total..];
    let ids: Vec<u32> = body[ids_at..ids_at + 4 * total]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if flags.iter().any(|&f| f > 1) {
        return None;
    }
    let mut examples = Vec::with_capacity(n);
    let mut at = 0;
    for len in lens {
        let input_ids = ids[at..at + len].to_vec();
        let labels = input_ids
            .iter()
            .zip(&flags[at..at + len])
            .map(|(&id, &t)| if t == 1 { id as i32 } else { IGNORE_INDEX })
            .collect();
        examples.push(Example { input_ids, labels });
        at += len;
    }
    Some(Cached {
        rows_read: usize::try_from(rows_read).ok()?,
        skipped: usize::try_from(skipped).ok()?,
        examples,
    })
}

/// The 16-byte checksum stored after the body.
pub(crate) fn checksum(body: &[u8]) -> [u8; 16] {
    let mut h = KeyHasher::new();
    h.bytes(body);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&h.a.to_le_bytes());
    out[8..].copy_from_slice(&h.b.to_le_bytes());
    out
}

/// Writes a cache file (to a temporary name, then renamed, so a crash never leaves a
/// half-written file under the real name).
pub(crate) fn save(path: &Path, c: &Cached) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let body = encode(c);
        w.write_all(&body)?;
        w.write_all(&checksum(&body))?;
        w.flush()?;
    }
    std::fs::rename(&tmp, path)
}

/// The file's bytes before the checksum.
pub(crate) fn encode(c: &Cached) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(MAGIC);
    for v in [c.rows_read, c.skipped, c.examples.len()] {
        w.extend_from_slice(&(v as u64).to_le_bytes());
    }
    for e in &c.examples {
        w.extend_from_slice(&(e.input_ids.len() as u32).to_le_bytes());
    }
    for e in &c.examples {
        for &id in &e.input_ids {
            w.extend_from_slice(&id.to_le_bytes());
        }
    }
    for e in &c.examples {
        w.extend(e.labels.iter().map(|&l| u8::from(l != IGNORE_INDEX)));
    }
    w
}
