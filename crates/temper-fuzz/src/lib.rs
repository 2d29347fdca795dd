//! Fuzz targets for every parser of untrusted bytes in temper: safetensors headers and
//! shard indexes, config.json, tokenizer.json and tokenizer_config.json (chat templates
//! included), chat templates alone, GGUF files, dataset rows (JSONL, JSON, Parquet), the
//! token cache and adapter_config.json. (The YAML training config is fuzzed inside
//! temper-cli, whose parser is private to the binary, with the same engine.)
//!
//! Each target writes its input where the parser expects it (a file in a scratch folder)
//! and runs the parser and what consumes its result. Seeds come from the repository's
//! fixtures. `cargo run --release -p temper-fuzz -- --seconds 60` runs them all;
//! `scripts/fuzz.sh` also runs the YAML target.

pub mod engine;

use std::path::{Path, PathBuf};

pub use engine::{class, fuzz, Budget, Finding, Guard, Report, Target};

/// The repository root (seeds are read from its fixtures).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(repo().join(rel)).unwrap_or_default()
}

thread_local! {
    /// A scratch folder per thread, reused by every execution.
    static SCRATCH: tempfile::TempDir = tempfile::tempdir().expect("a scratch folder");
}

/// Runs `f` on a scratch folder holding `files` (name, bytes), after clearing it.
fn in_scratch<R>(files: &[(&str, &[u8])], f: impl FnOnce(&Path) -> R) -> R {
    SCRATCH.with(|d| {
        let dir = d.path();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("scratch write");
        }
        f(dir)
    })
}

/// A small valid safetensors file (a two-layer model's names, tiny shapes).
fn small_safetensors() -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let names = [
        ("model.embed_tokens.weight", vec![8usize, 4]),
        ("model.layers.0.input_layernorm.weight", vec![4]),
        ("model.layers.1.mlp.up_proj.weight", vec![6, 4]),
        ("model.norm.weight", vec![4]),
    ];
    let data: Vec<Vec<u8>> = names
        .iter()
        .map(|(_, s)| {
            (0..s.iter().product::<usize>())
                .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = names
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.to_string(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), d).expect("view"),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None).expect("serialize")
}

fn safetensors_target(bytes: &[u8]) -> String {
    in_scratch(&[("model.safetensors", bytes)], |dir| {
        let st = temper_model::safetensors_dir::SafetensorsDir::open(dir);
        let Ok(st) = st else {
            return class(&st.map(|_| ()));
        };
        let _ = st.layer_indices();
        let _ = st.fingerprint();
        let names: Vec<String> = st.names().map(str::to_string).collect();
        for n in &names {
            if let Ok((_, shape)) = st.info(n) {
                if shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_some()
                {
                    let _ = st.read(n);
                }
            }
        }
        format!("ok {}", names.len().min(8))
    })
}

fn index_target(bytes: &[u8]) -> String {
    let shard = small_safetensors();
    in_scratch(
        &[
            ("model.safetensors.index.json", bytes),
            ("model-00001-of-00001.safetensors", &shard),
        ],
        |dir| {
            let r = temper_model::safetensors_dir::SafetensorsDir::open(dir);
            class(&r.map(|_| ()))
        },
    )
}

fn config_target(bytes: &[u8]) -> String {
    use temper_model::plan;
    let text = String::from_utf8_lossy(bytes);
    let r = temper_model::ModelConfig::from_json(&text, Path::new("config.json"));
    if let Ok(cfg) = &r {
        // Every size product of an accepted config must fit: the memory plan at the largest
        // micro-batch and LoRA rank the CLI accepts.
        let lora = temper_model::LoraConfig {
            r: 1 << 16,
            alpha: 16.0,
            dropout: 0.1,
            use_rslora: false,
            targets: temper_model::Target::ALL.to_vec(),
        };
        // temper-cli's MAX_STEP_TOKENS.
        let tokens = 1usize << 24;
        for ckpt in [
            temper_model::Checkpointing::Off,
            temper_model::Checkpointing::EveryLayer,
            temper_model::Checkpointing::EveryLayerOnHost,
        ] {
            for device in [plan::PlanDevice::Cpu, plan::PlanDevice::Cuda] {
                let m = plan::plan(
                    cfg,
                    &lora,
                    tokens,
                    cfg.max_positions,
                    ckpt,
                    1024,
                    temper_core::DType::F32,
                    device,
                    temper_core::memory::host_available_bytes(),
                );
                let _ = m.total();
            }
        }
        let _ = plan::weight_bytes_4bit(cfg, temper_core::DType::BF16, 64, true);
        let _ = plan::weight_bytes_8bit(cfg, temper_core::DType::BF16);
    }
    class(&r)
}

const CHAT: &str = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#;

/// Loads a tokenizer folder and tokenises a conversation with it.
fn tokenizer_folder(tokenizer_json: &[u8], tokenizer_config: &[u8]) -> String {
    in_scratch(
        &[
            ("tokenizer.json", tokenizer_json),
            ("tokenizer_config.json", tokenizer_config),
        ],
        |dir| {
            let tok = temper_data::Tokenizer::from_dir(dir);
            let Ok(tok) = tok else {
                return class(&tok.map(|_| ()));
            };
            let row =
                temper_data::parse_row(&serde_json::from_str(CHAT).expect("json")).expect("row");
            let r = temper_data::tokenize_sft(&tok, &row, &Default::default());
            let _ = tok.encode("hello world", true);
            class(&r)
        },
    )
}

fn tokenizer_config_target(bytes: &[u8]) -> String {
    tokenizer_folder(&read("examples/tiny/model/tokenizer.json"), bytes)
}

fn tokenizer_json_target(bytes: &[u8]) -> String {
    tokenizer_folder(bytes, &read("examples/tiny/model/tokenizer_config.json"))
}

fn template_target(bytes: &[u8]) -> String {
    let src = String::from_utf8_lossy(bytes);
    let t = temper_data::ChatTemplate::new(&src, Some("<s>".into()), Some("</s>".into()));
    let Ok(t) = t else {
        return class(&t.map(|_| ()));
    };
    let msgs = vec![
        temper_data::Message::new("user", "Hi"),
        temper_data::Message::new("assistant", "Hello."),
    ];
    let _ = t.render(&msgs, true);
    class(&t.render_tracked(&msgs, false))
}

fn gguf_target(bytes: &[u8]) -> String {
    in_scratch(&[("model.gguf", bytes)], |dir| {
        let f = temper_gguf::GgufFile::open(&dir.join("model.gguf"));
        let Ok(f) = f else {
            return class(&f.map(|_| ()));
        };
        for t in &f.tensors {
            if t.n_elements() <= 1 << 20 {
                let _ = f.tensor_f32(t);
            }
        }
        let _ = temper_gguf::tokenizer::tokenizer_files(&f);
        let arch = temper_gguf::GgufArch::of(&f);
        let Ok(arch) = arch else {
            return class(&arch.map(|_| ()));
        };
        class(&temper_gguf::config::hf_config(&f, arch, "float32"))
    })
}

fn rows_target(name: &str, bytes: &[u8]) -> String {
    in_scratch(&[(name, bytes)], |dir| {
        let r = temper_data::read_records(&dir.join(name));
        let Ok(records) = r else {
            return class(&r.map(|_| ()));
        };
        let mut ok = 0;
        for rec in &records {
            if let Ok(v) = &rec.value {
                for format in [
                    temper_data::DatasetFormat::Auto,
                    temper_data::DatasetFormat::Alpaca,
                    temper_data::DatasetFormat::ShareGpt,
                ] {
                    ok += usize::from(temper_data::to_row(v, format).is_ok());
                }
            }
        }
        format!("ok {} {}", records.len().min(4), ok.min(4))
    })
}

fn jsonl_target(bytes: &[u8]) -> String {
    rows_target("rows.jsonl", bytes)
}

fn json_target(bytes: &[u8]) -> String {
    rows_target("rows.json", bytes)
}

fn parquet_target(bytes: &[u8]) -> String {
    rows_target("rows.parquet", bytes)
}

fn cache_target(bytes: &[u8]) -> String {
    // Sealed with a valid checksum, so that the size checks behind it are reached.
    let sealed = temper_data::seal_token_cache(bytes);
    let _ = temper_data::parse_token_cache(bytes);
    match temper_data::parse_token_cache(&sealed) {
        Some(n) => format!("ok {}", n.min(4)),
        None => "rejected".into(),
    }
}

fn adapter_config_target(bytes: &[u8]) -> String {
    in_scratch(&[("adapter_config.json", bytes)], |dir| {
        class(&temper_model::adapter::read_config(dir))
    })
}

fn files(paths: &[&str]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| read(p))
        .filter(|b| !b.is_empty())
        .collect()
}

fn first_lines(path: &str, n: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(&read(path)).into_owned();
    let lines: Vec<&str> = text.lines().take(n).collect();
    (lines.join("\n") + "\n").into_bytes()
}

const JSON_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e308",
    "-1e308",
    "1e-400",
    "4611686018427387904",
    "18446744073709551616",
    "\"\\ud800\"",
    "\"\\udc00\"",
    "\\u0000",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"text\"",
    "\"prompt\"",
    "\"completion\"",
    "[]",
    "{}",
    "\u{feff}",
    "\u{fffd}",
];

const CONFIG_WORDS: &[&str] = &[
    "\"num_hidden_layers\"",
    "\"hidden_size\"",
    "\"intermediate_size\"",
    "\"vocab_size\"",
    "\"num_attention_heads\"",
    "\"num_key_value_heads\"",
    "\"head_dim\"",
    "\"rope_theta\"",
    "\"rms_norm_eps\"",
    "\"rope_scaling\"",
    "\"max_position_embeddings\"",
    "\"factor\"",
    "\"rope_type\"",
    "\"yarn\"",
    "\"llama3\"",
    "\"dynamic\"",
    "\"linear\"",
    "0",
    "-1",
    "1e308",
    "4611686018427387904",
    "4096",
    "131072",
    "16777216",
    "null",
    "\"qwen2\"",
    "\"mistral\"",
];

const TEMPLATE_WORDS: &[&str] = &[
    "{%",
    "%}",
    "{{",
    "}}",
    "{#",
    "#}",
    "for ",
    " in ",
    "range(100000)",
    "endfor",
    "if ",
    "endif",
    "set ",
    "namespace(",
    "~",
    "+",
    "*",
    "messages",
    "message['content']",
    "loop.index",
    "macro ",
    "endmacro",
    "call ",
    "generation",
    "endgeneration",
    "raise_exception(",
    "tojson",
    "|",
    "recursive",
    "loop(",
    "9999999",
    "'x' * 100000000",
    "strftime_now(",
];

const GGUF_WORDS: &[&str] = &[
    "GGUF",
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "general.architecture",
    "general.alignment",
    "tokenizer.ggml.tokens",
    "blk.0.",
    "token_embd.weight",
    "output.weight",
    "\x09\x00\x00\x00",
    "\x08\x00\x00\x00",
];

/// Every target of this crate.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "safetensors_header",
            seeds: || {
                let mut v = vec![small_safetensors()];
                v.extend(files(&["tests/fixtures/gguf/quants_reference.safetensors"]));
                v
            },
            run: safetensors_target,
            dictionary: JSON_WORDS,
        },
        Target {
            name: "safetensors_index",
            seeds: || {
                let shard = small_safetensors();
                let st = safetensors::SafeTensors::deserialize(&shard).expect("seed");
                let map: serde_json::Map<String, serde_json::Value> = st
                    .names()
                    .into_iter()
                    .map(|n| (n.to_string(), "model-00001-of-00001.safetensors".into()))
                    .collect();
                vec![
                    serde_json::json!({"metadata": {"total_size": 128}, "weight_map": map})
                        .to_string()
                        .into_bytes(),
                ]
            },
            run: index_target,
            dictionary: JSON_WORDS,
        },
        Target {
            name: "config_json",
            seeds: || {
                let mut v = files(&["examples/tiny/model/config.json"]);
                v.push(
                    br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#
                        .to_vec(),
                );
                v
            },
            run: config_target,
            dictionary: CONFIG_WORDS,
        },
        Target {
            name: "tokenizer_config_json",
            seeds: || files(&["examples/tiny/model/tokenizer_config.json"]),
            run: tokenizer_config_target,
            dictionary: TEMPLATE_WORDS,
        },
        Target {
            name: "tokenizer_json",
            seeds: || files(&["examples/tiny/model/tokenizer.json"]),
            run: tokenizer_json_target,
            dictionary: JSON_WORDS,
        },
        Target {
            name: "chat_template",
            seeds: || {
                let cfg: serde_json::Value =
                    serde_json::from_slice(&read("examples/tiny/model/tokenizer_config.json"))
                        .unwrap_or_default();
                let mut v = vec![temper_data::CHATML_TEMPLATE.as_bytes().to_vec()];
                if let Some(t) = cfg["chat_template"].as_str() {
                    v.push(t.as_bytes().to_vec());
                }
                v
            },
            run: template_target,
            dictionary: TEMPLATE_WORDS,
        },
        Target {
            name: "gguf",
            seeds: || {
                files(&[
                    "tests/fixtures/gguf/quants.gguf",
                    "tests/fixtures/gguf/tok_default.gguf",
                    "tests/fixtures/gguf/tiny_llama.gguf",
                ])
            },
            run: gguf_target,
            dictionary: GGUF_WORDS,
        },
        Target {
            name: "dataset_jsonl",
            seeds: || {
                vec![
                    first_lines("examples/tiny/data/eval.jsonl", 3),
                    b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"t\"}\n".to_vec(),
                    b"{\"instruction\": \"i\", \"input\": \"\", \"output\": \"o\"}\n{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]}\n".to_vec(),
                ]
            },
            run: jsonl_target,
            dictionary: JSON_WORDS,
        },
        Target {
            name: "dataset_json",
            seeds: || {
                vec![
                    b"[{\"text\": \"a\"}, {\"prompt\": \"p\", \"completion\": \"c\"}]".to_vec(),
                    b"{\"data\": [{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}]}"
                        .to_vec(),
                ]
            },
            run: json_target,
            dictionary: JSON_WORDS,
        },
        Target {
            name: "dataset_parquet",
            seeds: || {
                files(&[
                    "tests/fixtures/data/messages.parquet",
                    "tests/fixtures/data/prompt_completion.parquet",
                    "tests/fixtures/data/zstd.parquet",
                ])
            },
            run: parquet_target,
            dictionary: &[],
        },
        Target {
            name: "token_cache",
            seeds: || vec![temper_data::token_cache_example()],
            run: cache_target,
            dictionary: &[],
        },
        Target {
            name: "adapter_config_json",
            seeds: || {
                files(&[
                    "tests/fixtures/parity/llama_gqa/adapter/adapter_config.json",
                    "tests/fixtures/parity/qwen2/adapter/adapter_config.json",
                ])
            },
            run: adapter_config_target,
            dictionary: JSON_WORDS,
        },
    ]
}
