//! The on-disk cache of tokenised examples, keyed by a hash of everything that decides
//! them: the data files' bytes and paths, tokenizer.json, tokenizer_config.json, the
//! chat template, the row format, the mask options and temper-data's version.
//!
//! File layout (little-endian): magic `TEMPRC01`, rows_read u64, skipped u64,
//! examples u64, then every example's length (u32), then all token ids (u32), then one
//! byte per token (1 = trained).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::tokenize::Example;
use crate::IGNORE_INDEX;

const MAGIC: &[u8; 8] = b"TEMPRC01";

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

/// Reads a cache file; `None` when it is missing or not a complete cache file.
pub(crate) fn load(path: &Path) -> Option<Cached> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).ok()?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ok()?;
    if &magic != MAGIC {
        return None;
    }
    let mut u64s = [0u64; 3];
    for v in &mut u64s {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        *v = u64::from_le_bytes(b);
    }
    let [rows_read, skipped, n] = u64s.map(|v| v as usize);
    let lens: Vec<usize> = read_u32s(&mut r, n)?
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let total: usize = lens.iter().sum();
    let ids = read_u32s(&mut r, total)?;
    let mut trained = vec![0u8; total];
    r.read_exact(&mut trained).ok()?;
    let mut examples = Vec::with_capacity(n);
    let mut at = 0;
    for len in lens {
        let input_ids = ids[at..at + len].to_vec();
        let labels = input_ids
            .iter()
            .zip(&trained[at..at + len])
            .map(|(&id, &t)| if t == 1 { id as i32 } else { IGNORE_INDEX })
            .collect();
        examples.push(Example { input_ids, labels });
        at += len;
    }
    Some(Cached {
        rows_read,
        skipped,
        examples,
    })
}

fn read_u32s(r: &mut impl Read, n: usize) -> Option<Vec<u32>> {
    let mut bytes = vec![0u8; n * 4];
    r.read_exact(&mut bytes).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    )
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
        w.write_all(MAGIC)?;
        for v in [c.rows_read, c.skipped, c.examples.len()] {
            w.write_all(&(v as u64).to_le_bytes())?;
        }
        for e in &c.examples {
            w.write_all(&(e.input_ids.len() as u32).to_le_bytes())?;
        }
        for e in &c.examples {
            for &id in &e.input_ids {
                w.write_all(&id.to_le_bytes())?;
            }
        }
        for e in &c.examples {
            let flags: Vec<u8> = e
                .labels
                .iter()
                .map(|&l| u8::from(l != IGNORE_INDEX))
                .collect();
            w.write_all(&flags)?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, path)
}
