//! `merge_folder` against PEFT's `merge_and_unload`: fixtures made by
//! scripts/make_merge_fixtures.py from the parity cases (tests/fixtures/parity: a Llama with
//! GQA, a Qwen2 with q/k/v biases and tied embeddings, an rsLoRA adapter on three targets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use temper_core::{CpuBackend, DType};
use temper_model::merge::{merge_folder, MergeOptions};
use temper_model::safetensors_dir::SafetensorsDir;
use temper_model::{LoadOptions, Model, QuantType, QuantizeOnLoad, Target, TokenBatch};
use temper_quant::QuantState;

const CASES: [&str; 3] = ["llama_gqa", "qwen2", "llama_rslora"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parity(case: &str) -> (PathBuf, PathBuf) {
    let d = repo().join("tests/fixtures/parity").join(case);
    (d.join("model"), d.join("adapter"))
}

fn fixture(case: &str) -> serde_json::Value {
    let path = repo().join(format!("tests/fixtures/merge/{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn ints(v: &serde_json::Value) -> Vec<Vec<i64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("int"))
                .collect()
        })
        .collect()
}

/// Each fixture row's mean loss (targets shifted inside the row, -100 not counted), each row
/// run alone, as transformers ran them.
fn row_losses(dir: &Path, fx: &serde_json::Value) -> Vec<f64> {
    let model = Model::load(Arc::new(CpuBackend::new()), dir).expect("merged model loads");
    let ids = ints(&fx["input_ids"]);
    let labels = ints(&fx["labels"]);
    ids.iter()
        .zip(&labels)
        .map(|(ids, labels)| {
            let n = ids.len();
            let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
            let positions: Vec<u32> = (0..n as u32).collect();
            let targets: Vec<i32> = (0..n)
                .map(|t| {
                    if t + 1 < n {
                        labels[t + 1] as i32
                    } else {
                        -100
                    }
                })
                .collect();
            let cu = [0, n as u32];
            let batch = TokenBatch {
                ids: &ids,
                positions: &positions,
                cu_seqlens: &cu,
                targets: &targets,
            };
            let losses = model.token_losses(None, &batch).expect("losses");
            let counted = targets.iter().filter(|&&t| t >= 0).count();
            losses.iter().map(|&x| x as f64).sum::<f64>() / counted as f64
        })
        .collect()
}

fn worst_rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs() / w.abs()))
}

fn opts(dtype: DType) -> MergeOptions {
    MergeOptions {
        dtype: Some(dtype),
        ..MergeOptions::default()
    }
}

#[test]
fn a_float32_merge_gives_peft_merge_and_unload_losses() {
    for case in CASES {
        let (base, adapter) = parity(case);
        let out = tempfile::tempdir().expect("tempdir");
        let s = merge_folder(&base, &adapter, out.path(), &opts(DType::F32)).expect("merge");
        let fx = fixture(case);
        let want: Vec<f64> = fx["per_row_loss_f32"]
            .as_array()
            .expect("losses")
            .iter()
            .map(|x| x.as_f64().expect("f64"))
            .collect();
        let got = row_losses(out.path(), &fx);
        let err = worst_rel(&got, &want);
        println!(
            "{case}: {} weights merged; per-row loss vs PEFT merge_and_unload: worst rel {err:.2e}",
            s.merged
        );
        assert!(err <= 1e-5, "{case}: {got:?} vs {want:?}");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("config.json")).expect("config"),
        )
        .expect("json");
        assert_eq!(cfg["dtype"], "float32");
        assert!(out.path().join("generation_config.json").is_file());
    }
}

/// FNV-1a 64 of bytes, as the fixture script hashes tensors.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The base folder in bfloat16 (each f32 value rounded to nearest even, as torch casts),
/// written as transformers would save it.
fn bf16_copy(base: &Path, dir: &Path) {
    let bytes = std::fs::read(base.join("model.safetensors")).expect("base");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let f32s = temper_core::dtype::decode_le(view.data(), DType::F32);
        data.push((
            name,
            view.shape().to_vec(),
            temper_core::dtype::encode_le(&f32s, DType::BF16),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                .expect("view");
            (n.clone(), v)
        })
        .collect();
    std::fs::create_dir_all(dir).expect("mkdir");
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("write");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).expect("config"))
            .expect("json");
    cfg["dtype"] = "bfloat16".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write config");
}

#[test]
fn a_bfloat16_merge_is_bit_identical_to_peft() {
    for case in CASES {
        let (base, adapter) = parity(case);
        let tmp = tempfile::tempdir().expect("tempdir");
        let base16 = tmp.path().join("base");
        bf16_copy(&base, &base16);
        let out = tmp.path().join("merged");
        // No --dtype: the base's, bfloat16.
        let s = merge_folder(&base16, &adapter, &out, &MergeOptions::default()).expect("merge");
        assert_eq!(s.dtype, DType::BF16);
        let want: BTreeMap<String, String> =
            serde_json::from_value(fixture(case)["bf16_fnv1a"].clone()).expect("hashes");
        let bytes = std::fs::read(out.join("model.safetensors")).expect("merged");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut got = BTreeMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
            got.insert(name, fnv1a(view.data()));
        }
        let differ: Vec<&String> = want
            .keys()
            .filter(|k| got.get(*k) != want.get(*k))
            .collect();
        println!(
            "{case}: {} tensors, {} merged; differing from PEFT's bfloat16 merge: {differ:?}",
            got.len(),
            s.merged
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        assert!(differ.is_empty(), "{case}: {differ:?} differ from PEFT");
    }
}

#[test]
fn a_sharded_merge_lists_every_tensor_once_and_loads_the_same() {
    let case = "llama_gqa";
    let (base, adapter) = parity(case);
    let tmp = tempfile::tempdir().expect("tempdir");
    let one = tmp.path().join("one");
    let many = tmp.path().join("many");
    merge_folder(&base, &adapter, &one, &opts(DType::F32)).expect("merge");
    let o = MergeOptions {
        max_shard_bytes: 100_000,
        ..opts(DType::F32)
    };
    let s = merge_folder(&base, &adapter, &many, &o).expect("merge");
    assert!(s.shards >= 3, "{} shards", s.shards);

    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(many.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    let files: BTreeSet<&str> = map.values().map(|v| v.as_str().expect("file")).collect();
    assert_eq!(files.len(), s.shards);
    let mut in_files: Vec<String> = Vec::new();
    let mut total = 0u64;
    for f in &files {
        let bytes = std::fs::read(many.join(f)).expect("shard");
        assert!(bytes.len() <= 100_000 + 4096, "{f}: {} bytes", bytes.len());
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        for (name, view) in st.tensors() {
            assert_eq!(map[&name], *f, "{name} is listed in another shard");
            total += view.data().len() as u64;
            in_files.push(name);
        }
    }
    let listed: BTreeSet<&String> = map.keys().collect();
    let unique: BTreeSet<&String> = in_files.iter().collect();
    assert_eq!(unique.len(), in_files.len(), "a tensor is in two shards");
    assert_eq!(unique, listed);
    let base_names: BTreeSet<String> = SafetensorsDir::open(&base)
        .expect("base")
        .names()
        .map(str::to_string)
        .collect();
    assert_eq!(
        listed.into_iter().cloned().collect::<BTreeSet<_>>(),
        base_names
    );
    assert_eq!(index["metadata"]["total_size"], total);

    let fx = fixture(case);
    assert_eq!(row_losses(&many, &fx), row_losses(&one, &fx));
}

#[test]
fn a_merge_into_nf4_quantised_on_load_is_the_dequantised_weight_plus_delta_rounded_once() {
    let (base, adapter) = parity("llama_rslora");
    let out = tempfile::tempdir().expect("tempdir");
    let spec = QuantizeOnLoad {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let o = MergeOptions {
        dtype: Some(DType::BF16),
        load: LoadOptions {
            quantize: Some(spec),
            int8: false,
        },
        ..MergeOptions::default()
    };
    let s = merge_folder(&base, &adapter, out.path(), &o).expect("merge");
    assert!(s
        .quantized_base
        .as_deref()
        .is_some_and(|q| q.contains("nf4")));
    let quant_err = s.max_quant_error.expect("quantisation error reported");
    assert!(quant_err > 1e-3, "{quant_err}");

    let base_st = SafetensorsDir::open(&base).expect("base");
    let merged = SafetensorsDir::open(out.path()).expect("merged");
    let ad = SafetensorsDir::open_files(&adapter, &[adapter.join("adapter_model.safetensors")])
        .expect("adapter");
    let acfg = temper_model::adapter::read_config(&adapter).expect("adapter config");
    let scale = acfg.alpha as f64 / (acfg.r as f64).sqrt(); // rsLoRA
    assert!(acfg.use_rslora);
    let (mut n, mut differ, mut worst_ulps) = (0usize, 0usize, 0i32);
    for l in 0..2 {
        for t in Target::ALL {
            let name = format!("model.layers.{l}.{}.weight", t.path());
            let w = base_st.read(&name).expect("base weight");
            let q = QuantState::quantize(&w.data, &w.shape, "bfloat16", 64, QuantType::Nf4, true)
                .expect("quantize");
            let deq = q.dequantize_to_f32().expect("dequantize");
            let (d_out, d_in) = (w.shape[0], w.shape[1]);
            // The delta in f64: s * B A, only for the adapted targets.
            let delta: Vec<f64> = if acfg.targets.contains(&t) {
                let key = |w: char| {
                    format!(
                        "base_model.model.model.layers.{l}.{}.lora_{w}.weight",
                        t.path()
                    )
                };
                let a = ad.read(&key('A')).expect("A").data;
                let b = ad.read(&key('B')).expect("B").data;
                let r = acfg.r;
                (0..d_out * d_in)
                    .map(|e| {
                        let (i, j) = (e / d_in, e % d_in);
                        scale
                            * (0..r)
                                .map(|k| b[i * r + k] as f64 * a[k * d_in + j] as f64)
                                .sum::<f64>()
                    })
                    .collect()
            } else {
                vec![0.0; d_out * d_in]
            };
            let got = merged.read(&name).expect("merged weight").data;
            for ((g, dq), d) in got.iter().zip(&deq).zip(&delta) {
                let want = half::bf16::from_f64(*dq as f64 + d).to_f32();
                n += 1;
                if g.to_bits() != want.to_bits() {
                    differ += 1;
                    let ulps = (half::bf16::from_f32(*g).to_bits() as i32
                        - half::bf16::from_f32(want).to_bits() as i32)
                        .abs();
                    worst_ulps = worst_ulps.max(ulps);
                }
            }
        }
    }
    println!(
        "nf4 + double quant on load: {differ} of {n} merged values differ from \
         bf16(dequantise(W) + delta) computed in f64 (worst {worst_ulps} ulp); base moved by \
         quantising up to {quant_err:.2e}, delta up to {:.2e} of the weight",
        s.max_delta_ratio
    );
    // The f64 reference rounds once from the exact sum; the merge adds in f32 first, as PEFT
    // does, which may land the other side of a bfloat16 tie in rare cases.
    assert!(worst_ulps <= 1, "{worst_ulps} ulp");
    assert!(differ * 1000 <= n, "{differ} of {n} differ");
}

#[test]
fn a_non_empty_out_is_refused_unless_forced() {
    let (base, adapter) = parity("llama_rslora");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(out.path().join("notes.txt"), "keep").expect("write");
    let err = merge_folder(&base, &adapter, out.path(), &opts(DType::F32))
        .expect_err("non-empty folder refused");
    assert!(err.to_string().contains("--force"), "{err}");
    let forced = MergeOptions {
        force: true,
        ..opts(DType::F32)
    };
    merge_folder(&base, &adapter, out.path(), &forced).expect("forced merge");
    assert!(out.path().join("model.safetensors").is_file());
    assert!(out.path().join("notes.txt").is_file());
    // The base itself is never the output.
    let err = merge_folder(&base, &adapter, &base, &forced).expect_err("base refused");
    assert!(err.to_string().contains("input folder"), "{err}");
}

/// A random adapter (r 4, every target, non-zero A and B) for the model in `model`, saved in
/// `dir` as temper saves adapters.
fn random_adapter(model: &Path, dir: &Path) {
    let be = CpuBackend::new();
    let cfg = temper_model::ModelConfig::from_dir(model).expect("config");
    let lora = temper_model::LoraConfig {
        r: 4,
        alpha: 16.0,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let params = temper_model::LoraParams::build(&be, &cfg, &lora, |_, shape, _| {
        Ok((0..shape[0] * shape[1])
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect())
    })
    .expect("adapter");
    temper_model::adapter::save(&be, &params, "src", dir).expect("save adapter");
}

fn bnb_model(name: &str) -> PathBuf {
    repo()
        .join("crates/temper-quant/tests/fixtures/bnb/model")
        .join(name)
}

/// Every tensor of a merged folder, by name, as stored.
fn stored_tensors(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let (files, _) = temper_quant::weight_files(dir).expect("weight files");
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        for (name, view) in st.tensors() {
            out.insert(name, (view.shape().to_vec(), view.data().to_vec()));
        }
    }
    out
}

/// A folder saved by transformers + bitsandbytes in 4 or 8 bits merges to the same bits as
/// its bf16 original quantised while loading (bitsandbytes' quantisation, which temper's
/// reproduces bit for bit), and the merge says the base was quantised.
#[test]
fn a_bitsandbytes_folder_merges_like_its_original_quantised_on_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let adapter = tmp.path().join("adapter");
    random_adapter(&bnb_model("src"), &adapter);
    let cases = [
        (
            "nf4_dq",
            LoadOptions {
                quantize: Some(QuantizeOnLoad {
                    quant_type: QuantType::Nf4,
                    blocksize: 64,
                    double_quant: true,
                }),
                int8: false,
            },
        ),
        (
            "fp4",
            LoadOptions {
                quantize: Some(QuantizeOnLoad {
                    quant_type: QuantType::Fp4,
                    blocksize: 64,
                    double_quant: false,
                }),
                int8: false,
            },
        ),
        (
            "int8",
            LoadOptions {
                quantize: None,
                int8: true,
            },
        ),
    ];
    for (name, load) in cases {
        let stored = tmp.path().join(format!("{name}-stored"));
        let s = merge_folder(&bnb_model(name), &adapter, &stored, &opts(DType::BF16))
            .expect("merge the bitsandbytes folder");
        let q = s.quantized_base.clone().expect("quantised base reported");
        assert!(q.contains("bitsandbytes folder"), "{q}");
        let on_load = tmp.path().join(format!("{name}-on-load"));
        let o = MergeOptions {
            load,
            ..opts(DType::BF16)
        };
        merge_folder(&bnb_model("src"), &adapter, &on_load, &o).expect("merge on load");
        let a = stored_tensors(&stored);
        let b = stored_tensors(&on_load);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{name}"
        );
        let differ: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
        println!(
            "{name}: {} tensors, {} merged; differing from the original quantised on load: {differ:?}",
            a.len(),
            s.merged
        );
        assert!(differ.is_empty(), "{name}: {differ:?}");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(stored.join("config.json")).expect("config"),
        )
        .expect("json");
        assert!(cfg.get("quantization_config").is_none());
        assert_eq!(cfg["dtype"], "bfloat16");
    }
}

/// Phi-3's fused qkv_proj / gate_up_proj adapters fold into the fused weights, and Gemma's
/// norms (1 + w) are copied as stored: the merged folder's logits equal the base with the
/// adapter applied on the fly.
#[test]
fn fused_phi3_and_gemma_adapters_merge_into_the_same_logits() {
    use std::sync::Arc;
    use temper_core::CpuBackend;
    use temper_model::{adapter, Model, TokenBatch};
    for case in ["phi3_longrope", "gemma2_softcap"] {
        let (base, adapter_dir) = parity(case);
        let out = tempfile::tempdir().expect("tempdir");
        merge_folder(&base, &adapter_dir, out.path(), &opts(DType::F32)).expect("merge");
        let be = Arc::new(CpuBackend::new());
        let model = Model::load(be.clone(), &base).expect("base");
        let lora = adapter::load(&*be, &model.cfg, &adapter_dir).expect("adapter");
        let merged = Model::load(be.clone(), out.path()).expect("merged");
        let ids: Vec<u32> = (0..20).map(|i| (i * 5 + 3) % 60).collect();
        let positions: Vec<u32> = (0..20).collect();
        let targets = vec![-100i32; 20];
        let batch = TokenBatch {
            ids: &ids,
            positions: &positions,
            cu_seqlens: &[0, 20],
            targets: &targets,
        };
        let want = model.logits(Some(&lora), &batch).expect("logits");
        let got = merged.logits(None, &batch).expect("merged logits");
        // max |got - want| / max |want|: logits near zero make elementwise ratios noisy.
        let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
        let err = diff / scale;
        println!("{case}: merged logits within {err:.2e} of the unmerged adapter");
        assert!(err < 1e-5, "{case}: {err:.2e}");
    }
}
