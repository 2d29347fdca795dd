//! GGML tensor types and their dequantisation to f32.
//!
//! Block layouts as ggml defines them (`ggml-common.h`, `ggml-quants.c`
//! `dequantize_row_*`); every multi-byte field is little-endian. A block of `block_len`
//! values takes `block_bytes` bytes; a tensor's rows are whole blocks, back to back.

use half::{bf16, f16};

/// A GGML tensor type, by its id in the file (`enum ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    /// Every type temper dequantises.
    pub const SUPPORTED: [Self; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// ggml's name of the type (`ggml_type_name`), or `type <id>` for ids ggml does not define.
    pub fn name(self) -> String {
        const NAMES: &[(u32, &str)] = &[
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (8, "Q8_0"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (25, "I16"),
            (26, "I32"),
            (27, "I64"),
            (28, "F64"),
            (29, "IQ1_M"),
            (30, "BF16"),
            (34, "TQ1_0"),
            (35, "TQ2_0"),
            (39, "MXFP4"),
        ];
        NAMES
            .iter()
            .find(|(id, _)| *id == self.0)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("type {}", self.0))
    }

    /// (values per block, bytes per block), for the types whose layout temper knows.
    pub fn block(self) -> Option<(usize, usize)> {
        // Sizes from ggml's `type_traits` (QK_K = 256, K_SCALE_SIZE = 12).
        Some(match self.0 {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 2 + 16),
            3 => (32, 2 + 2 + 16),
            6 => (32, 2 + 4 + 16),
            7 => (32, 2 + 2 + 4 + 16),
            8 => (32, 2 + 32),
            10 => (256, 16 + 64 + 2 + 2),
            11 => (256, 32 + 64 + 12 + 2),
            12 => (256, 2 + 2 + 12 + 128),
            13 => (256, 2 + 2 + 12 + 32 + 128),
            14 => (256, 128 + 64 + 16 + 2),
            _ => return None,
        })
    }

    /// Bytes that `n` values of this type take, when `n` is a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (len, bytes) = self.block()?;
        let len = len as u64;
        // None also when the byte count does not fit in 64 bits (a damaged header).
        n.is_multiple_of(len)
            .then(|| (n / len).checked_mul(bytes as u64))
            .flatten()
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// `n` values of type `ty` stored in `src`, as f32. Fails (with a message) on a type temper
/// does not dequantise, a count that is not whole blocks, or a byte length that does not fit.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (block_len, block_bytes) = ty
        .block()
        .ok_or_else(|| format!("tensor type {ty} cannot be dequantised by temper"))?;
    if !n.is_multiple_of(block_len) {
        return Err(format!(
            "{n} values of {ty} are not a whole number of {block_len}-value blocks"
        ));
    }
    let want = n / block_len * block_bytes;
    if src.len() != want {
        return Err(format!(
            "{n} values of {ty} need {want} bytes, the data has {}",
            src.len()
        ));
    }
    let mut out = vec![0f32; n];
    let blocks = src
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block_len));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks
            .for_each(|(b, y)| y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        _ => unreachable!("block() is Some only for the types matched above"),
    }
    Ok(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// block_q8_0 { f16 d; i8 qs[32] }: y = d * q.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = d * (q as i8) as f32;
    }
}

/// block_q4_0 { f16 d; u8 qs[16] }: value j in the low nibble of qs[j], value j+16 in the
/// high nibble; y = d * (q - 8).
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// block_q4_1 { f16 d; f16 m; u8 qs[16] }: nibbles as q4_0; y = d * q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// block_q5_0 { f16 d; u32 qh; u8 qs[16] }: bit j of qh is the fifth bit of value j;
/// y = d * (q - 16).
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (lo as i32 - 16) as f32;
        y[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

/// block_q5_1 { f16 d; f16 m; u32 qh; u8 qs[16] }: bits as q5_0; y = d * q + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

/// block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }: 16 sub-blocks of 16. Value i =
/// 128h + 32s + l (half h, shift s, 0 <= l < 32) is bits 2s..2s+2 of qs[32h + l]; sub-block
/// i/16 has scale d * (scales & 15) and min dmin * (scales >> 4); y = scale * q - min.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, y) in y.iter_mut().enumerate() {
        let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
        let q = (qs[32 * h + l] >> (2 * s)) & 3;
        let sc = scales[i / 16];
        *y = d * (sc & 0x0F) as f32 * q as f32 - dmin * (sc >> 4) as f32;
    }
}

/// block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }: value i = 128h + 32s + l has
/// low bits 2s..2s+2 of qs[32h + l] and its high bit in bit i/32 of hmask[l]; a clear high bit
/// subtracts 4. Sixteen 6-bit scales: the low 4 bits of scale k are the nibble k%8 of bytes
/// 0..8 (low nibbles first), the high 2 bits are bits 2(k/4).. of byte 8 + k%4; minus 32.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut scale = [0f32; 16];
    for (k, s) in scale.iter_mut().enumerate() {
        let lo = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
        let hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        *s = d * ((lo | hi << 4) as i32 - 32) as f32;
    }
    for (i, y) in y.iter_mut().enumerate() {
        let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
        let low = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
        let high = (hmask[l] >> (i / 32)) & 1;
        let q = low - if high == 0 { 4 } else { 0 };
        *y = scale[i / 16] * q as f32;
    }
}

/// The eight 6-bit (scale, min) pairs of q4_K / q5_K (`get_scale_min_k4`): for j < 4 the low
/// 6 bits of bytes j and j + 4; for j >= 4 a nibble of byte j + 4 plus the top 2 bits of
/// bytes j - 4 and j.
pub(crate) fn scale_min_k4(sc: &[u8]) -> [(u8, u8); 8] {
    let mut out = [(0, 0); 8];
    for (j, o) in out.iter_mut().enumerate() {
        *o = if j < 4 {
            (sc[j] & 63, sc[j + 4] & 63)
        } else {
            (
                (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4),
                (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
            )
        };
    }
    out
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32. Sub-block
/// 2c is the low nibbles of qs[32c..32c+32], sub-block 2c+1 their high nibbles;
/// y = d * sc * q - dmin * m.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let sm = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for (i, y) in y.iter_mut().enumerate() {
        let (sb, l) = (i / 32, i % 32);
        let q = (qs[32 * (sb / 2) + l] >> (4 * (sb % 2))) & 0x0F;
        let (sc, m) = sm[sb];
        *y = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: as q4_K, plus a
/// fifth bit for value 32sb + l in bit sb of qh[l].
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let sm = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (i, y) in y.iter_mut().enumerate() {
        let (sb, l) = (i / 32, i % 32);
        let lo = (qs[32 * (sb / 2) + l] >> (4 * (sb % 2))) & 0x0F;
        let q = lo | ((qh[l] >> sb) & 1) << 4;
        let (sc, m) = sm[sb];
        *y = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: value i = 128h + 64k + m
/// (0 <= m < 64) has low nibble k of ql[64h + m]; writing i = 128h + 32s + l, its high two
/// bits are bits 2s..2s+2 of qh[32h + l]; y = d * scales[i/16] * (q - 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, y) in y.iter_mut().enumerate() {
        let h = i / 128;
        let (k, m) = ((i % 128) / 64, i % 64);
        let (s, l) = ((i % 128) / 32, i % 32);
        let lo = (ql[64 * h + m] >> (4 * k)) & 0x0F;
        let hi = (qh[32 * h + l] >> (2 * s)) & 3;
        let q = (lo | hi << 4) as i32 - 32;
        *y = d * (scales[i / 16] as i8) as f32 * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // ggml: sizeof(block_q4_K) == 144, block_q6_K == 210, block_q2_K == 84, block_q3_K == 110.
        assert_eq!(GgmlType::Q4_K.block(), Some((256, 144)));
        assert_eq!(GgmlType::Q6_K.block(), Some((256, 210)));
        assert_eq!(GgmlType::Q2_K.block(), Some((256, 84)));
        assert_eq!(GgmlType::Q3_K.block(), Some((256, 110)));
        assert_eq!(GgmlType::Q5_K.block(), Some((256, 176)));
        assert_eq!(GgmlType::Q5_1.block(), Some((32, 24)));
    }

    #[test]
    fn q8_0_by_hand() {
        // d = 0.5 (f16 0x3800), q = 0, 1, -1, 127, -128, ...
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&0x3800u16.to_le_bytes());
        b[3] = 1;
        b[4] = 0xFF;
        b[5] = 127;
        b[6] = 0x80;
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(&y[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
    }

    #[test]
    fn rejects_partial_blocks_and_bad_lengths() {
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], 31).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], 32).is_err());
        assert!(dequantize(GgmlType(16), &[0; 66], 256).is_err());
    }
}
