//! A damaged token cache is treated as missing and rebuilt: a count that would size a huge
//! allocation, one changed token id, a stray flag byte, trailing bytes. Nothing damaged is
//! ever used.

mod common;

use std::path::{Path, PathBuf};

use temper_data::{
    prepare, DataConfig, DatasetFormat, Overflow, Prepared, SftOptions, TemplateChoice, Tokenizer,
};

const ROWS: &str = concat!(
    "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}\n",
    "{\"text\": \"hello world again and again, hello world\"}\n",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}, {\"role\": \"assistant\", \"content\": \"It is 4.\"}]}\n",
);

fn config(train: PathBuf, cache: &Path) -> DataConfig {
    DataConfig {
        train: vec![train],
        eval: Vec::new(),
        eval_split: 0.0,
        format: DatasetFormat::Auto,
        template: TemplateChoice::Tokenizer,
        sft: SftOptions::default(),
        max_seq_len: 64,
        packing: true,
        overflow: Overflow::Truncate,
        skip_bad_rows: false,
        seed: 0,
        cache_dir: Some(cache.to_path_buf()),
    }
}

fn same(a: &Prepared, b: &Prepared) {
    assert_eq!(a.train_examples, b.train_examples);
    assert_eq!(a.train, b.train);
    assert_eq!(a.train_stats, b.train_stats);
}

#[test]
fn damaged_cache_files_are_rebuilt_not_used() {
    let tok_dir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tok_dir.path()).expect("tokenizer");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, ROWS).expect("write");
    let cache = dir.path().join("cache");
    let cfg = config(data, &cache);
    let first = prepare(&tok, &cfg).expect("prepare");
    let file = first.cache_file.clone().expect("cache file");
    let good = std::fs::read(&file).expect("read");
    assert!(prepare(&tok, &cfg).expect("prepare").cache_hit);

    // Header: magic (8), rows_read, skipped, examples (u64 each); then lengths, ids, flags.
    let n_examples = 3usize;
    let first_id = 32 + 4 * n_examples;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "example count of 2^50",
            Box::new(|b: &mut Vec<u8>| b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes())),
        ),
        (
            "a length of 2^31",
            Box::new(|b: &mut Vec<u8>| b[32..36].copy_from_slice(&(1u32 << 31).to_le_bytes())),
        ),
        (
            "one token id changed",
            Box::new(move |b: &mut Vec<u8>| b[first_id] ^= 1),
        ),
        (
            "a trained flag of 7",
            Box::new(|b: &mut Vec<u8>| {
                let at = b.len() - 17;
                b[at] = 7;
            }),
        ),
        (
            "bytes appended",
            Box::new(|b: &mut Vec<u8>| b.extend_from_slice(&[0; 5])),
        ),
        (
            "cut to the header",
            Box::new(|b: &mut Vec<u8>| b.truncate(30)),
        ),
    ];
    for (what, damage) in damages {
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).expect("write");
        let again = prepare(&tok, &cfg).expect("prepare");
        assert!(!again.cache_hit, "{what}: the damaged cache was used");
        same(&again, &first);
        assert_eq!(
            std::fs::read(&file).expect("read"),
            good,
            "{what}: not rebuilt"
        );
    }
}
