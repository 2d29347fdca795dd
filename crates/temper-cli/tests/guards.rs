//! Quiet failures caught before they cost anything: NaN block scales in a 4-bit or 8-bit
//! folder, a run whose gradients are all zero, Parquet footers that lie about their size.

mod common;

use std::path::{Path, PathBuf};

use common::{repo, s, temper, text};
use safetensors::{Dtype, SafeTensors};

/// (name, dtype, shape, bytes) of every tensor in a safetensors file.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_tensors(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// A copy of the tiny model in `dir/name`.
fn copy_tiny(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    for e in std::fs::read_dir(repo().join("examples/tiny/model")).expect("tiny model") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), out.join(e.file_name())).expect("copy");
    }
    out
}

/// Runs `temper eval` on `model` and returns what it printed (it must fail).
fn eval_fails(model: &Path) -> String {
    let data = repo().join("examples/tiny/data/eval.jsonl");
    let o = temper(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(&data),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    text(&o)
}

#[test]
fn non_finite_block_scales_of_a_quantised_folder_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 4 bits: `temper quantize`, then one absmax made NaN.
    let q4 = dir.path().join("nf4");
    let o = temper(&[
        "quantize",
        s(&repo().join("examples/tiny/model")),
        "--out",
        s(&q4),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let file = q4.join("model.safetensors");
    let mut tensors = read_tensors(&file);
    let name = "model.layers.1.mlp.up_proj.weight.absmax";
    let (_, dtype, _, bytes) = tensors
        .iter_mut()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(*dtype, Dtype::F32);
    bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&file, &tensors);
    let t = eval_fails(&q4);
    assert!(
        t.contains(&format!("tensor `{name}`")) && t.contains("non-finite value (NaN) at index 2"),
        "{t}"
    );

    // 8 bits (LLM.int8 row-wise, as bitsandbytes saves it): one projection stored as int8
    // codes and a row scale (SCB), one scale infinite.
    let q8 = copy_tiny(dir.path(), "int8");
    let file = q8.join("model.safetensors");
    let mut tensors = read_tensors(&file);
    let prefix = "model.layers.0.self_attn.q_proj";
    let w = tensors
        .iter_mut()
        .find(|t| t.0 == format!("{prefix}.weight"))
        .expect("q_proj");
    let rows = w.2[0];
    let codes = vec![1u8; w.2.iter().product()];
    w.1 = Dtype::I8;
    w.3 = codes;
    let mut scb: Vec<u8> = (0..rows).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    scb[12..16].copy_from_slice(&f32::INFINITY.to_le_bytes());
    tensors.push((format!("{prefix}.SCB"), Dtype::F32, vec![rows], scb));
    write_tensors(&file, &tensors);
    let cfg_path = q8.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("config")).expect("json");
    cfg["quantization_config"] = serde_json::json!({
        "quant_method": "bitsandbytes",
        "load_in_8bit": true,
        "load_in_4bit": false
    });
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    let t = eval_fails(&q8);
    assert!(
        t.contains(&format!("tensor `{prefix}.SCB`"))
            && t.contains("non-finite value (inf) at index 3"),
        "{t}"
    );
}

#[test]
fn a_run_whose_gradients_are_all_zero_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny");
    let cfg = dir.path().join("train.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {}\ndata: {}\noutput_dir: {}\nmax_seq_len: 128\n\
             per_device_train_batch_size: 2\ndevice: cpu\ndataset_cache_dir: none\n\
             max_steps: 22\nlogging_steps: 1\n",
            s(&tiny.join("model")),
            s(&tiny.join("data/train.jsonl")),
            s(&dir.path().join("out"))
        ),
    )
    .expect("write config");
    // lora_alpha so small that alpha / r rounds to 0 in f32: every gradient is exactly 0.
    let o = temper(&["train", s(&cfg), "--lora_alpha", "1e-45"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    let warnings: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("grad_norm has been 0"))
        .collect();
    assert_eq!(warnings.len(), 1, "{t}");
    assert!(
        warnings[0].contains("for 20 steps") && warnings[0].contains("check lora_alpha"),
        "{t}"
    );
    // A run that learns says nothing of the kind.
    let o = temper(&["train", s(&cfg), "--overwrite_output_dir"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("grad_norm has been 0"), "{}", text(&o));
}

#[test]
fn parquet_footers_that_claim_too_much_are_refused_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = std::fs::read(repo().join("tests/fixtures/data/messages.parquet")).expect("read");
    // The footer's length field claims 4 GiB of metadata in a 2 KB file.
    let mut long = real.clone();
    let n = long.len();
    long[n - 8..n - 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let long_path = dir.path().join("long_footer.parquet");
    std::fs::write(&long_path, long).expect("write");
    // The same file whose metadata lists 2^31 - 1 row groups (the parquet library would
    // reserve 206 GB for them before reading the first).
    let many =
        repo().join("tests/fixtures/fuzz/dataset_parquet/footer-claims-2g-row-groups.parquet");
    for (data, want) in [
        (
            long_path,
            "its footer claims 4294967280 bytes of metadata, but the file has",
        ),
        (many, "claims 2147483647 entries, but only"),
    ] {
        let cfg = dir.path().join("train.yaml");
        std::fs::write(
            &cfg,
            format!(
                "model: {}\ndata: {}\ndevice: cpu\ndataset_cache_dir: none\n",
                s(&repo().join("examples/tiny/model")),
                s(&data)
            ),
        )
        .expect("write config");
        let o = temper(&["preprocess", s(&cfg)]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let t = text(&o);
        assert!(
            t.contains(s(&data)) && t.contains("not a readable parquet file") && t.contains(want),
            "{t}"
        );
    }
}
