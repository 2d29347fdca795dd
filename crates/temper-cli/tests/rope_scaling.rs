//! Training past max_position_embeddings: refused by default, allowed on purpose with
//! `rope_scaling` (the embedded default model takes 512 positions).

mod common;

use std::path::{Path, PathBuf};

use common::{temper, text};

/// A config over the tiny model with text rows of about 800 tokens and max_seq_len 1024.
fn long_rows_config(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sentence = "the quick brown fox jumps over the lazy dog and counts 12 34 56. ";
    let rows: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({ "text": sentence.repeat(60 + i) })
            )
        })
        .collect();
    std::fs::write(dir.join("long.jsonl"), rows).expect("data");
    let cfg = dir.join("train.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {}\ndata: long.jsonl\nmax_seq_len: 1024\nper_device_train_batch_size: 1\n\
             max_steps: 2\ndevice: cpu\ndataset_cache_dir: none\noutput_dir: out\n",
            repo.join("examples/tiny/model").display()
        ),
    )
    .expect("config");
    cfg
}

#[test]
fn positions_past_the_model_are_refused_unless_rope_scaling_extends_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = long_rows_config(dir.path());
    let cfg = cfg.to_str().expect("utf8");
    let o = temper(&["train", cfg]);
    assert!(
        !o.status.success(),
        "trained past 512 positions:\n{}",
        text(&o)
    );
    let t = text(&o);
    assert!(
        t.contains("max_position_embeddings") && t.contains("rope_scaling"),
        "{t}"
    );

    for kind in ["linear", "dynamic", "yarn"] {
        let o = temper(&[
            "train",
            cfg,
            "--rope_scaling",
            kind,
            "--output_dir",
            dir.path().join(kind).to_str().expect("utf8"),
        ]);
        let t = text(&o);
        assert!(o.status.success(), "{kind}:\n{t}");
        // factor = 1024 / 512: positions up to 1024.
        assert!(t.contains("positions up to 1024"), "{kind}:\n{t}");
        assert!(t.contains("trained 2 steps"), "{kind}:\n{t}");
    }

    // A mapping as config.json writes it, with an explicit factor.
    let o = temper(&[
        "train",
        cfg,
        "--rope_scaling",
        "{rope_type: yarn, factor: 4.0, beta_fast: 16}",
        "--output_dir",
        dir.path().join("mapping").to_str().expect("utf8"),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("positions up to 2048"), "{t}");

    // A factor below 1 or an unknown type names the key.
    for bad in ["{rope_type: linear, factor: 0.5}", "ntk-by-parts"] {
        let o = temper(&["train", cfg, "--rope_scaling", bad]);
        assert!(!o.status.success(), "{bad} accepted");
        assert!(text(&o).contains("rope_scaling"), "{bad}: {}", text(&o));
    }
}
