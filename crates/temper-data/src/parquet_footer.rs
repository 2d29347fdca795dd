//! A Parquet file's footer checked before the `parquet` library reads it: the library sizes
//! its vectors from the counts the footer claims (`Vec::with_capacity(count)` for the row
//! groups and the schema), so a damaged footer claiming 2^31 row groups would ask for
//! hundreds of gigabytes before the first one is read. Here every count is checked against
//! the bytes that follow it, by walking the footer's Thrift compact encoding once (linear
//! in its size), and a file is refused with what is wrong before anything is allocated.
//!
//! The library reads a field of a known id as the type parquet.thrift gives it, whatever
//! type the field header declares; a field declared as one type and read as another would
//! make it read the following bytes differently from this walk (the fuzzer found a
//! `created_by` declared as a list, after which the library read a list of 2^31 column
//! orders that this walk never saw). So every field of a known id must be declared with the
//! wire type the library reads ([`FILE_METADATA`] and the structs under it).
//!
//! Layout (parquet-format's README): `PAR1`, column data, the FileMetaData struct in the
//! Thrift compact protocol, its length (u32 little-endian), `PAR1`.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{DataError, Result};

const MAGIC: &[u8; 4] = b"PAR1";
/// The most footer bytes read: far above a real dataset's (kilobytes to a few megabytes).
pub(crate) const MAX_FOOTER_BYTES: u64 = 256 << 20;
/// The most row groups: the `parquet` library numbers them with an i16.
pub(crate) const MAX_ROW_GROUPS: u64 = i16::MAX as u64;
/// Nesting of structs and lists in a footer (a real schema nests a few levels).
const MAX_DEPTH: usize = 64;

/// The error for a file the library must not be given, naming it.
fn not_readable(path: &Path) -> impl Fn(String) -> DataError + Copy + '_ {
    move |message| DataError::Config {
        path: path.to_path_buf(),
        message: format!("not a readable parquet file: {message}"),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> DataError + Copy + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks the footer of the Parquet file at `path`.
pub(crate) fn check(path: &Path) -> Result<()> {
    let (bad, io) = (not_readable(path), io_error(path));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < 12 {
        return Err(bad(format!(
            "{len} bytes, too short for a parquet file (at least 12)"
        )));
    }
    let mut head = [0u8; 4];
    f.read_exact(&mut head).map_err(io)?;
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8)).map_err(io)?;
    f.read_exact(&mut tail).map_err(io)?;
    if &head != MAGIC || &tail[4..] != MAGIC {
        return Err(bad("it does not start and end with PAR1".into()));
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer > len - 12 {
        return Err(bad(format!(
            "its footer claims {footer} bytes of metadata, but the file has {len} bytes in all \
             (the file is truncated or damaged)"
        )));
    }
    if footer > MAX_FOOTER_BYTES {
        return Err(bad(format!(
            "its footer claims {footer} bytes of metadata, more than the {} MiB temper reads",
            MAX_FOOTER_BYTES >> 20
        )));
    }
    let mut bytes = vec![0u8; footer as usize];
    f.seek(SeekFrom::End(-8 - footer as i64)).map_err(io)?;
    f.read_exact(&mut bytes).map_err(io)?;
    check_metadata(&bytes).map_err(|m| bad(format!("its footer metadata: {m}")))
}

/// Walks a FileMetaData struct: every list, set, map and string must fit in the bytes left,
/// and the row groups (field 4) must be at most [`MAX_ROW_GROUPS`].
pub(crate) fn check_metadata(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut w = Walker { bytes, at: 0 };
    w.file_metadata()
}

/// The most bytes one page may declare once decompressed: the library allocates that much
/// before it decompresses (real pages hold about a megabyte).
const MAX_PAGE_BYTES: i64 = 256 << 20;

/// The most entries a dictionary page may declare: the library makes room for all of them
/// (tens of bytes each) before decoding one (writers keep dictionary pages near a megabyte).
const MAX_DICTIONARY_VALUES: i64 = 1 << 24;

/// What a page header declares (Thrift compact PageHeader).
struct PageSizes {
    uncompressed: i64,
    compressed: i64,
    /// Entries of a dictionary page (its DictionaryPageHeader's num_values).
    dictionary_values: Option<i64>,
    /// The header's own length in bytes.
    header: usize,
}

fn zigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

// A page header's structs as parquet.thrift defines them (the library reads each known
// field as this type whatever the header declares, as in the footer).
const DATA_PAGE_HEADER: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::Varint),
    (3, Ty::Varint),
    (4, Ty::Varint),
    (5, Ty::Struct(STATISTICS)),
];
const DICTIONARY_PAGE_HEADER: &[(i64, Ty)] = &[(1, Ty::Varint), (2, Ty::Varint), (3, Ty::Bool)];
const DATA_PAGE_HEADER_V2: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::Varint),
    (3, Ty::Varint),
    (4, Ty::Varint),
    (5, Ty::Varint),
    (6, Ty::Varint),
    (7, Ty::Bool),
    (8, Ty::Struct(STATISTICS)),
];
const PAGE_HEADER: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::Varint),
    (3, Ty::Varint),
    (4, Ty::Varint),
    (5, Ty::Struct(DATA_PAGE_HEADER)),
    (6, Ty::Struct(EMPTY)),
    (7, Ty::Struct(DICTIONARY_PAGE_HEADER)),
    (8, Ty::Struct(DATA_PAGE_HEADER_V2)),
];

/// The page header at the start of `bytes`.
fn page_header(bytes: &[u8]) -> std::result::Result<PageSizes, String> {
    // Every known field declared with the type the library reads, before any is taken.
    Walker { bytes, at: 0 }.typed_struct(PAGE_HEADER, 1, false)?;
    let mut w = Walker { bytes, at: 0 };
    let (mut uncompressed, mut compressed, mut dictionary_values) = (None, None, None);
    w.fields(1, |id, ty, w| {
        if (id == 2 || id == 3) && Ty::Varint.matches(ty) {
            let v = zigzag(w.varint()?);
            if id == 2 {
                uncompressed = Some(v);
            } else {
                compressed = Some(v);
            }
            return Ok(true);
        }
        if id == 7 && ty == code::STRUCT {
            w.fields(2, |id, ty, w| {
                if id == 1 && Ty::Varint.matches(ty) {
                    dictionary_values = Some(zigzag(w.varint()?));
                    return Ok(true);
                }
                Ok(false)
            })?;
            return Ok(true);
        }
        Ok(false)
    })?;
    match (uncompressed, compressed) {
        (Some(u), Some(c)) if u >= 0 && c >= 0 => Ok(PageSizes {
            uncompressed: u,
            compressed: c,
            dictionary_values,
            header: w.at,
        }),
        _ => Err("a page header without valid sizes".into()),
    }
}

/// Checks every page header of the column chunks the footer lists (`chunks`: the byte
/// range of each): no page may declare more than [`MAX_PAGE_BYTES`] once decompressed, as
/// the library would allocate that much before reading it. Reads only the headers.
pub(crate) fn check_pages(path: &Path, chunks: &[(u64, u64)]) -> Result<()> {
    let (bad, io) = (not_readable(path), io_error(path));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = vec![0u8; 64 << 10];
    for &(start, size) in chunks {
        let end = start.saturating_add(size).min(len);
        let mut at = start;
        while at < end {
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            let n = ((end - at) as usize).min(head.len());
            f.read_exact(&mut head[..n]).map_err(io)?;
            let page = page_header(&head[..n])
                .map_err(|m| bad(format!("the page header at byte {at}: {m}")))?;
            let uncompressed = page.uncompressed;
            if let Some(values) = page.dictionary_values {
                if !(0..=MAX_DICTIONARY_VALUES).contains(&values) || values > uncompressed {
                    return Err(bad(format!(
                        "the dictionary page at byte {at} claims {values} entries in {uncompressed} bytes (at most one per byte and {MAX_DICTIONARY_VALUES} in all; the file is damaged)"
                    )));
                }
            }
            if uncompressed > MAX_PAGE_BYTES {
                return Err(bad(format!(
                    "the page at byte {at} claims {uncompressed} bytes once decompressed, more than the {} MiB temper reads in one page (the file is damaged)",
                    MAX_PAGE_BYTES >> 20
                )));
            }
            at = at
                .saturating_add(page.header as u64)
                .saturating_add(page.compressed as u64);
        }
    }
    Ok(())
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Compact-protocol type codes.
mod code {
    pub const STOP: u8 = 0;
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const I16: u8 = 4;
    pub const I32: u8 = 5;
    pub const I64: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const BINARY: u8 = 8;
    pub const LIST: u8 = 9;
    pub const SET: u8 = 10;
    pub const MAP: u8 = 11;
    pub const STRUCT: u8 = 12;
    pub const UUID: u8 = 13;
}

/// What the `parquet` library reads for a field: the wire type, and for lists and structs
/// what is inside.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    Byte,
    /// i16, i32, i64 and enums: a zigzag varint.
    Varint,
    Double,
    Binary,
    List(&'static Ty),
    Struct(&'static [(i64, Ty)]),
}

impl Ty {
    /// Whether a field header's type code is this type on the wire.
    fn matches(self, code: u8) -> bool {
        match self {
            Ty::Bool => code == code::TRUE || code == code::FALSE,
            Ty::Byte => code == code::BYTE,
            Ty::Varint => matches!(code, code::I16 | code::I32 | code::I64),
            Ty::Double => code == code::DOUBLE,
            Ty::Binary => code == code::BINARY,
            Ty::List(_) => code == code::LIST,
            Ty::Struct(_) => code == code::STRUCT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a bool",
            Ty::Byte => "a byte",
            Ty::Varint => "an integer",
            Ty::Double => "a double",
            Ty::Binary => "a string",
            Ty::List(_) => "a list",
            Ty::Struct(_) => "a struct",
        }
    }
}

// The structs of a footer as parquet.thrift (and parquet 57's readers) define them: (field
// id, type). Unions are structs of one field. Ids not listed are skipped by their declared
// type, by the library as here.
const EMPTY: &[(i64, Ty)] = &[];
const KEY_VALUE: &[(i64, Ty)] = &[(1, Ty::Binary), (2, Ty::Binary)];
const TIME_UNIT: &[(i64, Ty)] = &[
    (1, Ty::Struct(EMPTY)),
    (2, Ty::Struct(EMPTY)),
    (3, Ty::Struct(EMPTY)),
];
const TIME_TYPE: &[(i64, Ty)] = &[(1, Ty::Bool), (2, Ty::Struct(TIME_UNIT))];
const LOGICAL_TYPE: &[(i64, Ty)] = &[
    (1, Ty::Struct(EMPTY)),
    (2, Ty::Struct(EMPTY)),
    (3, Ty::Struct(EMPTY)),
    (4, Ty::Struct(EMPTY)),
    (5, Ty::Struct(&[(1, Ty::Varint), (2, Ty::Varint)])),
    (6, Ty::Struct(EMPTY)),
    (7, Ty::Struct(TIME_TYPE)),
    (8, Ty::Struct(TIME_TYPE)),
    (10, Ty::Struct(&[(1, Ty::Byte), (2, Ty::Bool)])),
    (11, Ty::Struct(EMPTY)),
    (12, Ty::Struct(EMPTY)),
    (13, Ty::Struct(EMPTY)),
    (14, Ty::Struct(EMPTY)),
    (15, Ty::Struct(EMPTY)),
    (16, Ty::Struct(&[(1, Ty::Byte)])),
    (17, Ty::Struct(&[(1, Ty::Binary)])),
    (18, Ty::Struct(&[(1, Ty::Binary), (2, Ty::Varint)])),
];
const SCHEMA_ELEMENT: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::Varint),
    (3, Ty::Varint),
    (4, Ty::Binary),
    (5, Ty::Varint),
    (6, Ty::Varint),
    (7, Ty::Varint),
    (8, Ty::Varint),
    (9, Ty::Varint),
    (10, Ty::Struct(LOGICAL_TYPE)),
];
const STATISTICS: &[(i64, Ty)] = &[
    (1, Ty::Binary),
    (2, Ty::Binary),
    (3, Ty::Varint),
    (4, Ty::Varint),
    (5, Ty::Binary),
    (6, Ty::Binary),
    (7, Ty::Bool),
    (8, Ty::Bool),
];
const SIZE_STATISTICS: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::List(&Ty::Varint)),
    (3, Ty::List(&Ty::Varint)),
];
const BOUNDING_BOX: &[(i64, Ty)] = &[
    (1, Ty::Double),
    (2, Ty::Double),
    (3, Ty::Double),
    (4, Ty::Double),
    (5, Ty::Double),
    (6, Ty::Double),
    (7, Ty::Double),
    (8, Ty::Double),
];
const GEOSPATIAL_STATISTICS: &[(i64, Ty)] =
    &[(1, Ty::Struct(BOUNDING_BOX)), (2, Ty::List(&Ty::Varint))];
const PAGE_ENCODING_STATS: &[(i64, Ty)] = &[(1, Ty::Varint), (2, Ty::Varint), (3, Ty::Varint)];
const COLUMN_METADATA: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::List(&Ty::Varint)),
    (3, Ty::List(&Ty::Binary)),
    (4, Ty::Varint),
    (5, Ty::Varint),
    (6, Ty::Varint),
    (7, Ty::Varint),
    (8, Ty::List(&Ty::Struct(KEY_VALUE))),
    (9, Ty::Varint),
    (10, Ty::Varint),
    (11, Ty::Varint),
    (12, Ty::Struct(STATISTICS)),
    (13, Ty::List(&Ty::Struct(PAGE_ENCODING_STATS))),
    (14, Ty::Varint),
    (15, Ty::Varint),
    (16, Ty::Struct(SIZE_STATISTICS)),
    (17, Ty::Struct(GEOSPATIAL_STATISTICS)),
];
const COLUMN_CRYPTO_METADATA: &[(i64, Ty)] = &[
    (1, Ty::Struct(EMPTY)),
    (
        2,
        Ty::Struct(&[(1, Ty::List(&Ty::Binary)), (2, Ty::Binary)]),
    ),
];
const COLUMN_CHUNK: &[(i64, Ty)] = &[
    (1, Ty::Binary),
    (2, Ty::Varint),
    (3, Ty::Struct(COLUMN_METADATA)),
    (4, Ty::Varint),
    (5, Ty::Varint),
    (6, Ty::Varint),
    (7, Ty::Varint),
    (8, Ty::Struct(COLUMN_CRYPTO_METADATA)),
    (9, Ty::Binary),
];
const SORTING_COLUMN: &[(i64, Ty)] = &[(1, Ty::Varint), (2, Ty::Bool), (3, Ty::Bool)];
const ROW_GROUP: &[(i64, Ty)] = &[
    (1, Ty::List(&Ty::Struct(COLUMN_CHUNK))),
    (2, Ty::Varint),
    (3, Ty::Varint),
    (4, Ty::List(&Ty::Struct(SORTING_COLUMN))),
    (5, Ty::Varint),
    (6, Ty::Varint),
    (7, Ty::Varint),
];
const AES_GCM: &[(i64, Ty)] = &[(1, Ty::Binary), (2, Ty::Binary), (3, Ty::Bool)];
/// The footer's top struct.
const FILE_METADATA: &[(i64, Ty)] = &[
    (1, Ty::Varint),
    (2, Ty::List(&Ty::Struct(SCHEMA_ELEMENT))),
    (3, Ty::Varint),
    (4, Ty::List(&Ty::Struct(ROW_GROUP))),
    (5, Ty::List(&Ty::Struct(KEY_VALUE))),
    (6, Ty::Binary),
    (7, Ty::List(&Ty::Struct(&[(1, Ty::Struct(EMPTY))]))),
    (
        8,
        Ty::Struct(&[(1, Ty::Struct(AES_GCM)), (2, Ty::Struct(AES_GCM))]),
    ),
    (9, Ty::Binary),
];

impl Walker<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> std::result::Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("it ends at byte {} in the middle of a value", self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        if n > self.left() as u64 {
            return Err(format!(
                "a value at byte {} claims {n} bytes, but {} are left",
                self.at,
                self.left()
            ));
        }
        self.at += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint at byte {} runs past 10 bytes", self.at))
    }

    /// A count of `what`, each taking at least one byte: at most the bytes left.
    fn count(&mut self, n: u64, what: &str) -> std::result::Result<u64, String> {
        if n > self.left() as u64 {
            return Err(format!(
                "a {what} at byte {} claims {n} entries, but only {} bytes are left (the \
                 footer is damaged)",
                self.at,
                self.left()
            ));
        }
        Ok(n)
    }

    /// (element type, count) of a list or set header.
    fn list_header(&mut self) -> std::result::Result<(u8, u64), String> {
        let h = self.byte()?;
        let n = match h >> 4 {
            15 => self.varint()?,
            n => u64::from(n),
        };
        let n = self.count(n, "list")?;
        Ok((h & 0x0f, n))
    }

    fn value(&mut self, ty: u8, depth: usize) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        match ty {
            code::TRUE | code::FALSE => Ok(()),
            code::BYTE => self.skip(1),
            code::I16 | code::I32 | code::I64 => self.varint().map(|_| ()),
            code::DOUBLE => self.skip(8),
            code::UUID => self.skip(16),
            code::BINARY => {
                let n = self.varint()?;
                self.skip(n)
            }
            code::LIST | code::SET => {
                let (elem, n) = self.list_header()?;
                self.elements(elem, n, depth)
            }
            code::MAP => {
                let n = self.varint()?;
                let n = self.count(n, "map")?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                for _ in 0..n {
                    self.element(kv >> 4, depth + 1)?;
                    self.element(kv & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            code::STRUCT => self.fields(depth + 1, |_, _, _| Ok(false)),
            other => Err(format!("unknown value type {other} at byte {}", self.at)),
        }
    }

    /// A list element: booleans take a byte each there.
    fn element(&mut self, ty: u8, depth: usize) -> std::result::Result<(), String> {
        match ty {
            code::TRUE | code::FALSE => self.skip(1),
            _ => self.value(ty, depth),
        }
    }

    fn elements(&mut self, ty: u8, n: u64, depth: usize) -> std::result::Result<(), String> {
        for _ in 0..n {
            self.element(ty, depth + 1)?;
        }
        Ok(())
    }

    /// A struct's fields up to its stop byte; `on_field(id, declared type, walker)` may read
    /// a field itself (returning true) instead of the generic walk.
    fn fields(
        &mut self,
        depth: usize,
        mut on_field: impl FnMut(i64, u8, &mut Self) -> std::result::Result<bool, String>,
    ) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        let mut id = 0i64;
        loop {
            let h = self.byte()?;
            let ty = h & 0x0f;
            if ty == code::STOP {
                return Ok(());
            }
            id = match h >> 4 {
                0 => {
                    let z = self.varint()?;
                    (z >> 1) as i64 ^ -((z & 1) as i64)
                }
                delta => id + i64::from(delta),
            };
            if !on_field(id, ty, self)? {
                self.value(ty, depth)?;
            }
        }
    }

    /// A struct whose known fields are read as `fields` says (each must be declared with the
    /// type the library reads), the others skipped by their declared type. `top`: the
    /// FileMetaData, whose field 4 lists the row groups.
    fn typed_struct(
        &mut self,
        fields: &'static [(i64, Ty)],
        depth: usize,
        top: bool,
    ) -> std::result::Result<(), String> {
        self.fields(depth, |id, declared, w| {
            let Some(&(_, ty)) = fields.iter().find(|(f, _)| *f == id) else {
                return Ok(false);
            };
            if !ty.matches(declared) {
                return Err(format!(
                    "field {id} before byte {} is declared as type {declared}, but parquet \
                     reads {} there (the file is damaged)",
                    w.at,
                    ty.name()
                ));
            }
            w.typed_value(ty, declared, depth, top && id == 4)?;
            Ok(true)
        })
    }

    /// A value of `ty`, declared as `code` (which matches it).
    fn typed_value(
        &mut self,
        ty: Ty,
        code: u8,
        depth: usize,
        row_groups: bool,
    ) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        match ty {
            Ty::List(elem) => {
                let (elem_code, n) = self.list_header()?;
                if n > 0 && !elem.matches(elem_code) {
                    return Err(format!(
                        "a list before byte {} holds type {elem_code}, but parquet reads {} \
                         there (the file is damaged)",
                        self.at,
                        elem.name()
                    ));
                }
                if row_groups && n > MAX_ROW_GROUPS {
                    return Err(format!(
                        "it lists {n} row groups; temper reads files of at most \
                         {MAX_ROW_GROUPS} (write the dataset with larger row groups)"
                    ));
                }
                for _ in 0..n {
                    match elem {
                        Ty::Struct(fields) => self.typed_struct(fields, depth + 1, false)?,
                        _ => self.element(elem_code, depth + 1)?,
                    }
                }
                Ok(())
            }
            Ty::Struct(fields) => self.typed_struct(fields, depth + 1, false),
            _ => self.value(code, depth),
        }
    }

    fn file_metadata(&mut self) -> std::result::Result<(), String> {
        self.typed_struct(FILE_METADATA, 1, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A varint.
    fn v(mut x: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// A file of `PAR1`, `metadata`, its length as `claimed` and `PAR1`.
    fn file(metadata: &[u8], claimed: u32) -> tempfile::NamedTempFile {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(metadata);
        bytes.extend_from_slice(&claimed.to_le_bytes());
        bytes.extend_from_slice(MAGIC);
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), bytes).expect("write");
        f
    }

    #[test]
    fn real_files_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data");
        for name in [
            "messages.parquet",
            "prompt_completion.parquet",
            "zstd.parquet",
        ] {
            check(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_footer_longer_than_the_file_is_refused() {
        let f = file(&[0], u32::MAX);
        let e = check(f.path()).expect_err("refused").to_string();
        assert!(e.contains("claims 4294967295 bytes of metadata"), "{e}");
    }

    #[test]
    fn counts_past_the_bytes_left_are_refused() {
        // version 1 (i32), then field 4 (row_groups): a list of 2^31 - 1 structs.
        let mut m = vec![0x15, 0x02, 0x39, 0xfc];
        m.extend(v(i32::MAX as u64));
        m.extend([0x00, 0x00]);
        let f = file(&m, m.len() as u32);
        let e = check(f.path()).expect_err("refused").to_string();
        assert!(e.contains("claims 2147483647 entries"), "{e}");
        // A string (created_by, field 6) claiming more bytes than there are.
        let mut m = vec![0x68];
        m.extend(v(1 << 40));
        let e = check_metadata(&m).expect_err("refused");
        assert!(e.contains("claims 1099511627776 bytes"), "{e}");
        // Row groups that are really there, but more than an i16 numbers.
        let n = MAX_ROW_GROUPS + 1;
        let mut m = vec![0x49, 0xfc];
        m.extend(v(n));
        m.extend(std::iter::repeat_n(0u8, n as usize));
        m.push(0);
        let e = check_metadata(&m).expect_err("refused");
        assert!(e.contains("32768 row groups"), "{e}");
    }

    #[test]
    fn a_field_declared_as_another_type_than_parquet_reads_is_refused() {
        // created_by (field 6, a string) declared as a list: the library would read it as a
        // string and go on out of step with the encoding (found by the fuzzer: it then
        // reserved 2^31 column orders).
        let f = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/dataset_parquet/footer-field-declared-as-another-type.parquet");
        let e = check(&f).expect_err("refused").to_string();
        assert!(
            e.contains("field 6 before byte 1 is declared as type 9, but parquet reads a string"),
            "{e}"
        );
        // A list of the wrong element type: row groups (structs) as integers.
        let e = check_metadata(&[0x49, 0x15, 0x02, 0x00]).expect_err("refused");
        assert!(
            e.contains("holds type 5, but parquet reads a struct"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_and_truncation_are_refused() {
        // An unknown field (15) is walked by its declared type: structs in structs.
        let mut m = vec![0xfc];
        m.extend([0x1c; 99]);
        m.push(0);
        assert!(check_metadata(&m)
            .expect_err("refused")
            .contains("nest deeper"));
        assert!(check_metadata(&[0x15])
            .expect_err("refused")
            .contains("ends at byte"));
    }
}
