//! A small real tokenizer folder made in the test itself: byte-level BPE trained on a
//! few sentences (so merges exist and token boundaries are not trivial), special
//! tokens for ChatML and Llama 3, a post-processor that prepends a BOS, and a
//! tokenizer_config.json given by each test.

#![allow(dead_code)]

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

pub const SPECIALS: &[&str] = &[
    "<s>",
    "</s>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

const CORPUS: &[&str] = &[
    "hello world again and again, hello world",
    "Hi there! How are you today? hello world again",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Second answer. First answer. What is the answer? again and again",
    "system user assistant You are terse. Be brief.",
    "What is 2+2? It is 4. Hello? And again?",
];

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3 style: writes bos_token itself, strips contents with Python's `.strip()`,
/// checks role alternation with `raise_exception`, skips empty system prompts with
/// `.startswith` / loop controls.
pub const LLAMA3: &str = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'].strip() %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system = none %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if system is not none %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\n' + system + '<|eot_id|>' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['content'].startswith('#skip') %}
        {%- continue %}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// Trains the tokenizer and adds a `TemplateProcessing` post-processor that
/// prepends `bos` (single: `bos $A`).
pub fn build_tokenizer(bos: &str) -> tokenizers::Tokenizer {
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let trainer = BpeTrainer::builder()
        .vocab_size(400)
        .min_frequency(1)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    tok.train(&mut trainer, CORPUS.iter())
        .expect("train tokenizer");
    let bos_id = tok.token_to_id(bos).expect("bos in vocab");
    let pp = TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .expect("single")
        .try_pair(format!("{bos} $A {bos}:1 $B:1"))
        .expect("pair")
        .special_tokens(vec![(bos.to_string(), bos_id)])
        .build()
        .expect("post-processor");
    tok.with_post_processor(Some(pp));
    tok
}

/// Writes tokenizer.json (with `bos` prepended) and, if given, tokenizer_config.json.
pub fn write_dir(dir: &Path, bos: &str, config: Option<serde_json::Value>) {
    build_tokenizer(bos)
        .save(dir.join("tokenizer.json"), false)
        .expect("save tokenizer.json");
    if let Some(cfg) = config {
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg).expect("json"),
        )
        .expect("write tokenizer_config.json");
    }
}

pub fn chatml_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "chat_template": CHATML,
        })),
    );
    dir
}

pub fn llama3_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dir(
        dir.path(),
        "<|begin_of_text|>",
        Some(serde_json::json!({
            "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>", "special": true},
            "eos_token": {"content": "<|eot_id|>"},
            "chat_template": LLAMA3,
        })),
    );
    dir
}

/// The text of each maximal run of trained tokens, decoded without skipping specials.
pub fn trained_runs(tok: &temper_data::Tokenizer, ex: &temper_data::Example) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&id, &l) in ex.input_ids.iter().zip(&ex.labels) {
        if l == -100 {
            if !cur.is_empty() {
                runs.push(tok.decode(&cur, false).expect("decode"));
                cur.clear();
            }
        } else {
            assert_eq!(l, id as i32, "a trained label must equal its token");
            cur.push(id);
        }
    }
    if !cur.is_empty() {
        runs.push(tok.decode(&cur, false).expect("decode"));
    }
    runs
}

pub fn untrained_text(tok: &temper_data::Tokenizer, ex: &temper_data::Example) -> String {
    let ids: Vec<u32> = ex
        .input_ids
        .iter()
        .zip(&ex.labels)
        .filter(|(_, &l)| l == -100)
        .map(|(&id, _)| id)
        .collect();
    tok.decode(&ids, false).expect("decode")
}
