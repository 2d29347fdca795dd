//! Hub dataset ids resolve through the local Hugging Face cache layout.

use std::path::Path;

use temper_data::hub::{looks_like_hub_id, resolve_in};
use temper_data::read_records;

#[test]
fn hub_ids_resolve_to_the_snapshot_refs_main_names() {
    let cache = tempfile::tempdir().expect("tempdir");
    let repo = cache.path().join("datasets--someone--chat-set");
    for rev in ["aaa111", "bbb222"] {
        let dir = repo.join("snapshots").join(rev).join("data");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("train.jsonl"),
            format!("{{\"text\": \"from {rev}\"}}\n"),
        )
        .expect("write");
    }
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), "bbb222\n").expect("write");

    let dir = resolve_in(cache.path(), "someone/chat-set").expect("resolves");
    assert!(dir.ends_with("snapshots/bbb222"), "{}", dir.display());
    let records = read_records(&dir).expect("reads");
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].value.as_ref().expect("json")["text"],
        "from bbb222"
    );

    // Without refs/main and with two snapshots the choice is refused, naming the folder.
    std::fs::remove_file(repo.join("refs/main")).expect("rm");
    let err = resolve_in(cache.path(), "someone/chat-set")
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 snapshots"), "{err}");
    // A dataset not in the cache says how to get it.
    let err = resolve_in(cache.path(), "someone/other")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huggingface-cli download --repo-type dataset someone/other"),
        "{err}"
    );
}

#[test]
fn only_owner_slash_name_reads_as_a_hub_id() {
    for id in ["HuggingFaceH4/ultrachat_200k", "tatsu-lab/alpaca", "a/b.c"] {
        assert!(looks_like_hub_id(Path::new(id)), "{id}");
    }
    for path in ["data.jsonl", "./a/b", "/a/b", "a/b/c", "a//b", "../x"] {
        assert!(!looks_like_hub_id(Path::new(path)), "{path}");
    }
}
