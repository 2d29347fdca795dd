//! Inputs the fuzzers found (tests/fixtures/fuzz/): each must give an error, not a panic.

use std::path::{Path, PathBuf};

fn fixtures(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fuzz")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {}", dir.display());
    v
}

#[test]
fn damaged_parquet_files_are_errors_naming_the_file() {
    for f in fixtures("dataset_parquet") {
        let e = temper_data::read_records(&f)
            .expect_err("a damaged parquet file")
            .to_string();
        assert!(e.contains(&f.display().to_string()), "{e}");
    }
}

#[test]
fn a_tag_whose_open_and_close_overlap_compiles_or_fails_cleanly() {
    for src in ["{%}", "{%-}", "{% generation %}{%}{% endgeneration %}"] {
        // Either outcome is fine; a panic is not.
        let _ = temper_data::ChatTemplate::new(src, None, None);
    }
    for f in fixtures("chat_template") {
        let src = String::from_utf8_lossy(&std::fs::read(&f).expect("read")).into_owned();
        let _ = temper_data::ChatTemplate::new(&src, None, None);
    }
}

#[test]
fn a_page_claiming_gigabytes_once_decompressed_is_refused_before_the_library_allocates() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fuzz/dataset_parquet/page-claims-1.5g-decompressed.parquet");
    let e = temper_data::read_records(&f)
        .expect_err("a damaged page header")
        .to_string();
    assert!(e.contains("once decompressed"), "{e}");
    assert!(e.contains("page-claims-1.5g-decompressed.parquet"), "{e}");
}

#[test]
fn a_dictionary_page_claiming_more_entries_than_bytes_is_refused() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fuzz/dataset_parquet/dictionary-claims-642m-entries.parquet");
    let e = temper_data::read_records(&f)
        .expect_err("a damaged dictionary page")
        .to_string();
    assert!(e.contains("dictionary page"), "{e}");
}
