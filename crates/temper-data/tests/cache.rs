//! The on-disk cache of tokenised examples: a second run is a hit that gives the same
//! rows without rewriting the file; changing the data bytes or a setting that decides
//! the tokens is a miss; settings applied after the cache (max_seq_len, packing) are
//! hits that still give what an uncached run gives.

mod common;

use std::path::{Path, PathBuf};

use temper_data::{
    prepare, DataConfig, DatasetFormat, Overflow, Prepared, SftOptions, TemplateChoice, Tokenizer,
};

const ROWS: &str = concat!(
    "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}\n",
    "{\"text\": \"hello world again and again, hello world\"}\n",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}, {\"role\": \"assistant\", \"content\": \"It is 4.\"}]}\n",
    "{\"prompt\": \"The capital of Italy is\", \"completion\": \" Rome.\"}\n",
    "{\"text\": 7}\n",
);

fn config(train: PathBuf, cache: Option<&Path>) -> DataConfig {
    DataConfig {
        train: vec![train],
        eval: Vec::new(),
        eval_split: 0.0,
        format: DatasetFormat::Auto,
        template: TemplateChoice::Tokenizer,
        sft: SftOptions::default(),
        max_seq_len: 32,
        packing: true,
        overflow: Overflow::Truncate,
        skip_bad_rows: true,
        seed: 0,
        cache_dir: cache.map(Path::to_path_buf),
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn same_output(a: &Prepared, b: &Prepared) {
    assert_eq!(a.train_examples, b.train_examples);
    assert_eq!(a.train, b.train);
    assert_eq!(a.eval, b.eval);
    assert_eq!(a.train_stats, b.train_stats);
}

struct Setup {
    tok_dir: tempfile::TempDir,
    tok: Tokenizer,
    _dir: tempfile::TempDir,
    data: PathBuf,
    cache: PathBuf,
}

fn setup() -> Setup {
    let tok_dir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tok_dir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, ROWS).unwrap();
    let cache = dir.path().join("cache");
    Setup {
        tok_dir,
        tok,
        _dir: dir,
        data,
        cache,
    }
}

#[test]
fn second_run_reads_the_cache_and_gives_identical_rows() {
    let s = setup();
    let uncached = prepare(&s.tok, &config(s.data.clone(), None)).unwrap();
    assert!(!uncached.cache_hit);
    assert_eq!(uncached.cache_file, None);
    assert_eq!(uncached.train_stats.skipped, 1);
    // Prompt/completion rows have masked prompts: the cache must keep the mask.
    assert!(uncached.train_stats.trained_tokens < uncached.train_stats.tokens);

    let first = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(!first.cache_hit);
    let file = first.cache_file.clone().expect("a cache file");
    assert_eq!(cache_files(&s.cache), std::slice::from_ref(&file));
    same_output(&first, &uncached);
    let written = std::fs::metadata(&file).unwrap().modified().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();

    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.cache_file.as_ref(), Some(&file));
    same_output(&second, &uncached);
    // Counts of rows read and skipped come back from the cache too.
    assert_eq!(second.train_stats.rows_read, 5);
    assert_eq!(second.train_stats.skipped, 1);
    // A hit does not rewrite the file.
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        written
    );
    assert_eq!(cache_files(&s.cache), std::slice::from_ref(&file));

    // The hit really reads the file: a cache file cut short is a miss, rewritten whole.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let third = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(!third.cache_hit);
    same_output(&third, &uncached);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
}

#[test]
fn changed_data_bytes_miss_the_cache() {
    let s = setup();
    let first = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    // Same length, one letter changed.
    std::fs::write(&s.data, ROWS.replace("Paris", "Parix")).unwrap();
    let changed = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(!changed.cache_hit);
    assert_ne!(changed.cache_file, first.cache_file);
    assert_ne!(changed.train_examples, first.train_examples);
    let uncached = prepare(&s.tok, &config(s.data.clone(), None)).unwrap();
    same_output(&changed, &uncached);
    assert_eq!(cache_files(&s.cache).len(), 2);
    // And back: the first file is a hit again.
    std::fs::write(&s.data, ROWS).unwrap();
    let back = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(back.cache_hit);
    same_output(&back, &first);
}

#[test]
fn settings_that_decide_the_tokens_miss_the_cache() {
    let s = setup();
    let base = config(s.data.clone(), Some(&s.cache));
    let first = prepare(&s.tok, &base).unwrap();
    let mut variants: Vec<(&str, DataConfig)> = Vec::new();
    let mut c = base.clone();
    c.sft.completion_only_loss = false;
    variants.push(("completion_only_loss", c));
    let mut c = base.clone();
    c.sft.append_eos = false;
    variants.push(("append_eos", c));
    let mut c = base.clone();
    c.template = TemplateChoice::ChatMl;
    variants.push(("chat_template", c));
    let mut c = base.clone();
    c.format = DatasetFormat::ShareGpt;
    c.skip_bad_rows = true;
    variants.push(("dataset_format", c));
    let mut c = base.clone();
    c.skip_bad_rows = false;
    variants.push(("skip_bad_rows", c));
    let mut seen = vec![first.cache_file.clone().unwrap()];
    for (name, cfg) in variants {
        match prepare(&s.tok, &cfg) {
            Ok(p) => {
                assert!(!p.cache_hit, "{name}");
                let f = p.cache_file.clone().unwrap();
                assert!(!seen.contains(&f), "{name}");
                seen.push(f);
                let mut uncached = cfg.clone();
                uncached.cache_dir = None;
                same_output(&p, &prepare(&s.tok, &uncached).unwrap());
            }
            // Without skip_bad_rows the bad last row is an error, not a cached result.
            Err(e) => {
                assert_eq!(name, "skip_bad_rows");
                assert!(e.to_string().contains("train.jsonl:5:"), "{e}");
            }
        }
    }
    // The tokenizer's files are part of the key.
    let cfg_path = s.tok_dir.path().join("tokenizer_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\"<pad>\"", "\"</s>\"")).unwrap();
    let tok = Tokenizer::from_dir(s.tok_dir.path()).unwrap();
    let p = prepare(&tok, &base).unwrap();
    assert!(!p.cache_hit, "tokenizer_config.json");
}

#[test]
fn max_seq_len_and_packing_apply_after_the_cache() {
    // The cache holds whole tokenised sequences; truncation and packing come after it,
    // so other lengths reuse it and must give what an uncached run gives.
    let s = setup();
    let first = prepare(&s.tok, &config(s.data.clone(), Some(&s.cache))).unwrap();
    assert!(!first.cache_hit);
    for (max_seq_len, packing, overflow) in [
        (8, true, Overflow::Truncate),
        (8, true, Overflow::Split),
        (12, false, Overflow::Truncate),
        (512, true, Overflow::Truncate),
    ] {
        let mut cfg = config(s.data.clone(), Some(&s.cache));
        cfg.max_seq_len = max_seq_len;
        cfg.packing = packing;
        cfg.overflow = overflow;
        let p = prepare(&s.tok, &cfg).unwrap();
        assert!(p.cache_hit, "{max_seq_len} {packing}");
        assert_eq!(p.cache_file, first.cache_file);
        cfg.cache_dir = None;
        let u = prepare(&s.tok, &cfg).unwrap();
        same_output(&p, &u);
        assert!(p.train.iter().all(|r| r.input_ids.len() <= max_seq_len));
    }
    assert_eq!(cache_files(&s.cache).len(), 1);
}
