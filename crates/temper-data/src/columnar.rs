//! Parquet files (what `datasets` pushes to the Hub and `Dataset.to_parquet` writes),
//! read row by row into JSON through the `parquet` crate's record API. Built with
//! snappy only (pyarrow's default codec); files compressed otherwise are an error that
//! says so. Arrow IPC files (`save_to_disk` folders) are not read yet.

use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::error::{DataError, Result};
use crate::source::{Origin, Record};

pub(crate) fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    // Counts in a damaged footer would size the library's first allocations: checked first.
    crate::parquet_footer::check(path)?;
    // The parquet library panics on some damaged files (a page size past its buffer, an
    // index out of bounds) instead of returning an error: such a panic becomes one.
    std::panic::catch_unwind(|| read_parquet_unguarded(path)).unwrap_or_else(|_| {
        Err(DataError::Config {
            path: path.to_path_buf(),
            message: "not a readable parquet file: the parquet library failed on it (the \
                      file is damaged or truncated)"
                .into(),
        })
    })
}

fn read_parquet_unguarded(path: &Path) -> Result<Vec<Record>> {
    let bad = |message: String| DataError::Config {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| bad(format!("not a parquet file: {e}")))?;
    // Page headers size the library's buffers before anything is decompressed: checked too.
    let chunks: Vec<(u64, u64)> = reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns())
        .map(|c| {
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            (start.max(0) as u64, c.compressed_size().max(0) as u64)
        })
        .collect();
    crate::parquet_footer::check_pages(path, &chunks)?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad(format!("cannot read rows: {e}")))?;
    let shared: Arc<Path> = Arc::from(path);
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| {
            bad(format!(
                "row {}: {e} (temper reads snappy-compressed or uncompressed parquet)",
                i + 1
            ))
        })?;
        out.push(Record {
            origin: Origin {
                path: shared.clone(),
                line: i + 1,
                is_line: false,
            },
            value: Ok(row.to_json_value()),
        });
    }
    Ok(out)
}

pub(crate) fn read_arrow(path: &Path) -> Result<Vec<Record>> {
    Err(DataError::Config {
        path: path.to_path_buf(),
        message: "arrow files (a `datasets` save_to_disk folder) are not read yet: export the \
                  dataset with `Dataset.to_parquet(...)` or `Dataset.to_json(...)`"
            .into(),
    })
}
