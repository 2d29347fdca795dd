//! Tokenizer loading, chat templates and loss masks, against a tokenizer made here.

mod common;

use common::*;
use temper_data::{
    tokenize_row, ChatTemplate, DataError, Message, Row, TokenizeOptions, Tokenizer,
};

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hello?"),
        Message::new("assistant", "Hi there!"),
        Message::new("user", "And again?"),
        Message::new("assistant", "Second answer."),
    ]
}

const CHATML_RENDERED: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n\
<|im_start|>user\nHello?<|im_end|>\n\
<|im_start|>assistant\nHi there!<|im_end|>\n\
<|im_start|>user\nAnd again?<|im_end|>\n\
<|im_start|>assistant\nSecond answer.<|im_end|>\n";

fn opts() -> TokenizeOptions {
    TokenizeOptions {
        append_eos: true,
        max_seq_len: None,
    }
}

#[test]
fn tokenizer_reads_special_tokens_and_round_trips() {
    let dir = chatml_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let reference = build_tokenizer("<s>");
    assert_eq!(tok.vocab_size(), reference.get_vocab_size(true));
    assert_eq!(tok.bos_id(), reference.token_to_id("<s>"));
    assert_eq!(tok.eos_id(), reference.token_to_id("</s>"));
    assert_eq!(tok.pad_id(), reference.token_to_id("<pad>"));
    let text = "hello world, The capital of France is Paris.";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids, reference.encode(text, true).unwrap().get_ids());
    assert_eq!(ids[0], tok.bos_id().unwrap());
    assert_eq!(tok.encode(text, false).unwrap(), ids[1..].to_vec());
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    assert_eq!(tok.decode(&ids, false).unwrap(), format!("<s>{text}"));
}

#[test]
fn added_token_objects_and_named_templates() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": {"content": "<|im_end|>"},
            "pad_token": null,
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": CHATML},
            ],
        })),
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), tok.token_to_id("<s>"));
    assert_eq!(tok.eos_id(), tok.token_to_id("<|im_end|>"));
    assert_eq!(tok.pad_id(), None);
    let rendered = tok
        .chat_template()
        .unwrap()
        .render(&conversation(), false)
        .unwrap();
    assert_eq!(rendered, CHATML_RENDERED);
}

#[test]
fn chat_template_jinja_file_is_used_when_config_has_none() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), "<s>", None);
    std::fs::write(dir.path().join("chat_template.jinja"), CHATML).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), None, "no tokenizer_config.json: no named bos");
    let rendered = tok
        .chat_template()
        .unwrap()
        .render(&conversation(), false)
        .unwrap();
    assert_eq!(rendered, CHATML_RENDERED);
}

#[test]
fn chatml_renders_like_transformers() {
    let t = ChatTemplate::new(CHATML, Some("<s>".into()), Some("</s>".into())).unwrap();
    assert_eq!(t.render(&conversation(), false).unwrap(), CHATML_RENDERED);
    let prompt = &conversation()[..4];
    let expected = "<|im_start|>system\nYou are terse.<|im_end|>\n\
<|im_start|>user\nHello?<|im_end|>\n\
<|im_start|>assistant\nHi there!<|im_end|>\n\
<|im_start|>user\nAnd again?<|im_end|>\n\
<|im_start|>assistant\n";
    assert_eq!(t.render(prompt, true).unwrap(), expected);
}

#[test]
fn llama3_renders_with_bos_strip_and_loop_controls() {
    let t = ChatTemplate::new(
        LLAMA3,
        Some("<|begin_of_text|>".into()),
        Some("<|eot_id|>".into()),
    )
    .unwrap();
    let msgs = vec![
        Message::new("system", "  Be brief. "),
        Message::new("user", " What is 2+2?\n"),
        Message::new("assistant", " It is 4. "),
        Message::new("user", "#skip this one"),
    ];
    let expected =
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4.<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(t.render(&msgs, true).unwrap(), expected);
}

#[test]
fn raise_exception_reaches_the_caller() {
    let t = ChatTemplate::new(LLAMA3, Some("<|begin_of_text|>".into()), None).unwrap();
    let msgs = vec![Message::new("user", "a"), Message::new("user", "b")];
    let err = t.render(&msgs, false).unwrap_err();
    assert!(matches!(err, DataError::Template(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate user/assistant"),
        "{err}"
    );
}

#[test]
fn python_methods_tojson_and_namespace() {
    let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}\
{{ ns.n }}|{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|\
{% for k, v in messages[0].items() %}{{ k }}={{ v.strip().upper() }};{% endfor %}|\
{{ 'a,b,c'.split(',') | join('+') }}|{% if 'abc'.endswith('bc') %}yes{% endif %}|{{ 1.0 | tojson }}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let msgs = vec![Message::new("user", " hé \"q\"<&>\n")];
    let expected = "1|[{\"role\": \"user\", \"content\": \" hé \\\"q\\\"<&>\\n\"}]|\
{\n  \"role\": \"user\",\n  \"content\": \" hé \\\"q\\\"<&>\\n\"\n}|\
role=USER;content=HÉ \"Q\"<&>;|a+b+c|yes|1.0";
    assert_eq!(t.render(&msgs, false).unwrap(), expected);
}

#[test]
fn chatml_trains_exactly_assistant_content_and_im_end() {
    let dir = chatml_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let ex = tokenize_row(&tok, &Row::Messages(conversation()), &opts()).unwrap();
    // The ids are those of the whole rendering, without special tokens added: the
    // ChatML template writes no BOS, so there is none.
    assert_eq!(ex.input_ids, tok.encode(CHATML_RENDERED, false).unwrap());
    assert!(!ex.input_ids.contains(&tok.bos_id().unwrap()));
    assert_eq!(
        trained_runs(&tok, &ex),
        vec!["Hi there!<|im_end|>", "Second answer.<|im_end|>"]
    );
    assert_eq!(
        untrained_text(&tok, &ex),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
<|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\n\n\
<|im_start|>user\nAnd again?<|im_end|>\n<|im_start|>assistant\n\n"
    );
}

#[test]
fn llama3_has_one_bos_and_trains_the_answer_and_eot() {
    let dir = llama3_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let bos = tok.bos_id().unwrap();
    let msgs = vec![
        Message::new("system", "  Be brief. "),
        Message::new("user", " What is 2+2?"),
        Message::new("assistant", " It is 4. "),
    ];
    let ex = tokenize_row(&tok, &Row::Messages(msgs), &opts()).unwrap();
    assert_eq!(ex.input_ids[0], bos);
    assert_eq!(
        ex.input_ids.iter().filter(|&&i| i == bos).count(),
        1,
        "double BOS"
    );
    assert_eq!(trained_runs(&tok, &ex), vec!["It is 4.<|eot_id|>"]);
    // Plain text through the same tokenizer gets the post-processor's BOS, once.
    let text = tokenize_row(&tok, &Row::Text("hello world".into()), &opts()).unwrap();
    assert_eq!(text.input_ids[0], bos);
    assert_eq!(
        text.input_ids[1],
        tok.encode("hello world", false).unwrap()[0]
    );
}

#[test]
fn prefixes_that_render_differently_fall_back_to_content_search() {
    // Earlier assistant turns get a "[old]" marker the prefix renderings never show (so
    // the first answer is found by content search), and the template ignores
    // add_generation_prompt (so the last answer's prefix difference holds its header).
    let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n\
{% if m.role == 'assistant' and not loop.last %}[old]{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}";
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": src})),
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let ex = tokenize_row(&tok, &Row::Messages(conversation()), &opts()).unwrap();
    assert_eq!(
        trained_runs(&tok, &ex),
        vec!["Hi there!<|im_end|>", "Second answer.<|im_end|>"]
    );
}

#[test]
fn a_merge_across_the_boundary_falls_back_to_offsets() {
    let src = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({"eos_token": "</s>", "chat_template": src})),
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let whole = tok.encode("hello world again", false).unwrap();
    let mut pieces = tok.encode("hello wor", false).unwrap();
    pieces.extend(tok.encode("ld again", false).unwrap());
    assert_ne!(whole, pieces, "the test needs \" world\" to be one token");
    let msgs = vec![
        Message::new("user", "hello wor"),
        Message::new("assistant", "ld again"),
    ];
    let ex = tokenize_row(&tok, &Row::Messages(msgs), &opts()).unwrap();
    assert_eq!(ex.input_ids, whole);
    // As transformers' assistant masks: " world" overlaps the assistant's text, so it is
    // trained.
    assert_eq!(trained_runs(&tok, &ex), vec![" world again"]);
}

#[test]
fn prompt_completion_masks_the_prompt() {
    let dir = chatml_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let row = Row::PromptCompletion {
        prompt: "The capital of France is".into(),
        completion: " Paris.".into(),
    };
    let ex = tokenize_row(&tok, &row, &opts()).unwrap();
    let mut expected = tok.encode("The capital of France is Paris.", true).unwrap();
    expected.push(tok.eos_id().unwrap());
    assert_eq!(ex.input_ids, expected);
    assert_eq!(trained_runs(&tok, &ex), vec![" Paris.</s>"]);
    assert_eq!(untrained_text(&tok, &ex), "<s>The capital of France is");
    let n_prompt = tok.encode("The capital of France is", true).unwrap().len();
    assert!(ex.labels[..n_prompt].iter().all(|&l| l == -100));
    assert!(ex.labels[n_prompt..].iter().all(|&l| l != -100));
}

#[test]
fn prompt_completion_merge_across_boundary() {
    let dir = chatml_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let row = Row::PromptCompletion {
        prompt: "hello wor".into(),
        completion: "ld again".into(),
    };
    let ex = tokenize_row(&tok, &row, &opts()).unwrap();
    let mut expected = tok.encode("hello world again", true).unwrap();
    expected.push(tok.eos_id().unwrap());
    assert_eq!(ex.input_ids, expected);
    // As TRL: the completion starts where the prompt's ids and the joint ids diverge.
    assert_eq!(trained_runs(&tok, &ex), vec![" world again</s>"]);
}

#[test]
fn text_rows_train_everything_with_one_bos_and_one_eos() {
    let dir = chatml_dir();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let (bos, eos) = (tok.bos_id().unwrap(), tok.eos_id().unwrap());
    let ex = tokenize_row(&tok, &Row::Text("hello world".into()), &opts()).unwrap();
    assert_eq!(ex.input_ids.first(), Some(&bos));
    assert_eq!(ex.input_ids.last(), Some(&eos));
    assert!(ex
        .labels
        .iter()
        .zip(&ex.input_ids)
        .all(|(&l, &i)| l == i as i32));
    assert_eq!(
        tok.decode(&ex.input_ids, false).unwrap(),
        "<s>hello world</s>"
    );

    // Already starting with BOS and ending with EOS: neither is doubled.
    let ex2 = tokenize_row(&tok, &Row::Text("<s>hello world</s>".into()), &opts()).unwrap();
    assert_eq!(ex2, ex);

    let no_eos = TokenizeOptions {
        append_eos: false,
        max_seq_len: Some(3),
    };
    let ex3 = tokenize_row(&tok, &Row::Text("hello world again".into()), &no_eos).unwrap();
    let full = tok.encode("hello world again", true).unwrap();
    assert_eq!(ex3.input_ids, full[..3].to_vec());
    assert_eq!(ex3.labels.len(), 3);
}

#[test]
fn llama_class_rebuilds_the_post_processor() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "add_bos_token": true,
            "add_eos_token": true,
        })),
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let (bos, eos) = (tok.bos_id().unwrap(), tok.eos_id().unwrap());
    let ids = tok.encode("hello world", true).unwrap();
    let body = tok.encode("hello world", false).unwrap();
    assert_eq!(ids, [vec![bos], body, vec![eos]].concat());
    // The eos the post-processor puts after the prompt is not left between prompt and
    // completion, and is trained at the end.
    let row = Row::PromptCompletion {
        prompt: "hello".into(),
        completion: " world".into(),
    };
    let ex = tokenize_row(&tok, &row, &opts()).unwrap();
    assert_eq!(ex.input_ids, ids);
    assert_eq!(trained_runs(&tok, &ex), vec![" world</s>"]);
}

#[test]
fn messages_without_a_template_name_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"})),
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tok.chat_template().is_none());
    let err = tokenize_row(&tok, &Row::Messages(conversation()), &opts()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    assert!(err.to_string().contains("chat_template"), "{err}");
}

#[test]
fn a_bad_template_is_an_error_naming_the_config() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        "<s>",
        Some(serde_json::json!({"chat_template": "{% for m in messages %}"})),
    );
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
}

/// Against the repository's tiny example (a real byte-level BPE tokenizer folder and
/// chat dataset made by scripts/make_tiny_example.py), when it is present.
#[test]
fn tiny_example_dataset_trains_only_assistant_turns() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny");
    let (model, data) = (root.join("model"), root.join("data/train.jsonl"));
    if !model.join("tokenizer.json").exists() || !data.exists() {
        eprintln!("skipped: {} not present", root.display());
        return;
    }
    let tok = Tokenizer::from_dir(&model).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_id(), tok.token_to_id("<|im_end|>"));
    assert_eq!(tok.pad_id(), tok.token_to_id("<|endoftext|>"));
    let rows = temper_data::read_jsonl(&data).unwrap();
    assert!(!rows.is_empty());
    let examples = temper_data::tokenize_rows(&tok, &rows, &opts()).unwrap();
    let template = tok.chat_template().unwrap();
    for (row, ex) in rows.iter().zip(&examples) {
        let Row::Messages(msgs) = row else {
            panic!("the tiny dataset is conversational")
        };
        let rendered = template.render(msgs, false).unwrap();
        assert_eq!(ex.input_ids, tok.encode(&rendered, false).unwrap());
        let expected: Vec<String> = msgs
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>", m.content))
            .collect();
        assert_eq!(trained_runs(&tok, ex), expected);
    }
}
