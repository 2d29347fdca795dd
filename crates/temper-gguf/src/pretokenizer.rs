//! The pre-tokenizer of a byte-level BPE vocabulary, chosen by `tokenizer.ggml.pre` as
//! llama.cpp chooses it: `llama_vocab::impl::load` maps the name to a pre-type (with its
//! `ignore_merges` and default `add_bos`), and `llm_tokenizer_bpe` gives each pre-type its
//! list of regexes (`regex_exprs`), both in llama.cpp's `src/llama-vocab.cpp`; the regexes are
//! applied by `unicode_regex_split` in `src/unicode.cpp`. Read from llama.cpp as vendored in
//! llama-cpp-python 0.3.36.
//!
//! llama.cpp applies the regexes one after another, each to every piece the previous one made,
//! keeping both the matches and the text between them as pieces; then each piece is spelled in
//! GPT-2's byte alphabet and merged on its own. In `tokenizers` that is a Sequence of Split
//! pre-tokenizers (behavior Isolated, or MergedWithPrevious for the one split that joins text
//! to the match after it), then ByteLevel without its own regex.
//!
//! The regexes below are llama.cpp's, in Rust's regex syntax (as `tokenizers` compiles them
//! with fancy-regex), rewritten where llama.cpp does not read its own string as a Unicode
//! regex engine would:
//! - A regex that names a Unicode category runs over a "collapsed" copy of the text, where each
//!   non-ASCII character becomes one byte for its category, and the regex's `\p{Lu}`, `\p{Ll}`,
//!   `\p{Lt}`, `\p{Lm}` and `\p{Lo}` all become the letter class: written `\p{L}` here.
//!   For the same reason `((?=[\p{L}])([^a-z]))` means "a letter other than a-z" (every
//!   non-ASCII letter passes both that and its A-Z twin): written `[\p{L}&&[^a-z]]`.
//! - The GPT-2, Llama 3, Qwen2, Qwen3.5, Kimi-K2 and AFMoE splits are hand-written loops chosen
//!   by the regex string; written here as the regex each loop carries out (GPT-2's ends in
//!   `|\s+`, which the loop does and the string omits; AFMoE's digit groups and Kimi-K2's
//!   letters are spelled out; AFMoE's loop also keeps the text before a run of digits with the
//!   run's first group).
//! - std::regex has no `(?i:...)`, so llama.cpp spells contractions `'[sS]|'[tT]|...`; kept, so
//!   `'ſ` (which Unicode case folding would match) is not a contraction.
//! - `\d` is the ASCII digits in std::regex: written `[0-9]`.
//! - `\s` is Unicode White_Space in both (llama.cpp maps non-ASCII whitespace to `\v`).

/// GPT-2's split (llama.cpp: `unicode_regex_split_custom_gpt2`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split (`unicode_regex_split_custom_llama3`), also DBRX, Smaug and ChatGLM4.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`unicode_regex_split_custom_qwen2`), also StableLM2, Hunyuan, Solar Open, Grok-2.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split (`unicode_regex_split_custom_qwen35`).
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Each digit alone.
const DIGIT: &str = r"\p{N}";
/// Runs of digits cut into threes from the right, the first group taking the remainder
/// (`unicode_regex_split_custom_afmoe`, also used for Tiny Aya's `\d{1,3}(?=(?:\d{3})*\b)`).
/// That loop keeps the text before a run of digits in one piece with the run's first group
/// (`Behavior::MergedWithPrevious`).
const DIGITS_THREES_FROM_RIGHT: &str = r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))";
/// DeepSeek-V3 / Hunyuan-dense / JoyAI / HY-V4: Han and kana runs, then the word split.
const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const HAN_KANA: &str = r"[一-龥\x{3040}-ゟ゠-ヿ]+";
/// Poro, BLOOM, GPT-3-Finnish and Viking.
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
/// Tekken, GPT-4o and MiniMax-M2 with llama.cpp's letter classes (see the module doc).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Runs without a newline, runs of newlines (`unicode_regex_split_custom_newlines`).
const LINES: &str = r"[^\n]+|[\n]+";

/// What becomes of the text between a step's matches, as `tokenizers` names it
/// (`SplitDelimiterBehavior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Matches and the text between them are pieces of their own.
    Isolated,
    /// A match joins the text just before it (unless that was a match too).
    MergedWithPrevious,
}

/// One step of a pre-tokenizer: a regex that splits every piece the steps before made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub regex: &'static str,
    pub behavior: Behavior,
}

/// llama.cpp's pre-tokenizer types (`LLAMA_VOCAB_PRE_TYPE_*`) that a name can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreType {
    Default,
    Llama3,
    DeepseekLlm,
    DeepseekCoder,
    Falcon,
    Mpt,
    Starcoder,
    Gpt2,
    Refact,
    CommandR,
    Stablelm2,
    Qwen2,
    Olmo,
    Dbrx,
    Smaug,
    Poro,
    Chatglm4,
    Viking,
    Jais,
    Tekken,
    Smollm,
    Codeshell,
    Bloom,
    Gpt3Finnish,
    Exaone,
    Chameleon,
    Minerva,
    Deepseek3Llm,
    Gpt4o,
    Superbpe,
    Trillion,
    Bailingmoe,
    SeedCoder,
    Hunyuan,
    KimiK2,
    HunyuanDense,
    Grok2,
    GraniteDocling,
    MinimaxM2,
    Afmoe,
    SolarOpen,
    Youtu,
    ExaoneMoe,
    Qwen35,
    TinyAya,
    JoyaiLlm,
    Jais2,
    Gemma4,
    SarvamMoe,
    Minicpm5,
    Whitespace,
    GraniteEmbMulti,
    Mellum2,
    Laguna,
    HyV4,
    Spark2_5,
    Ufakzeka,
}

/// What `tokenizer.ggml.pre` selects in llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreTokenizer {
    pub pre_type: PreType,
    /// A piece that is itself in the vocabulary becomes that token, without merging.
    pub ignore_merges: bool,
    /// BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `name` with a `gpt2`
    /// vocabulary (an absent key is "default"); None for a name llama.cpp does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        use PreType::*;
        let (pre_type, ignore_merges, add_bos) = match name {
            "default" => (Default, false, false),
            "minicpm5" => (Minicpm5, true, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (Llama3, true, true),
            "deepseek-llm" => (DeepseekLlm, false, false),
            "deepseek-coder" => (DeepseekCoder, false, false),
            "deepseek-v3" => (Deepseek3Llm, false, false),
            "spark2_5" => (Spark2_5, false, false),
            "youtu" => (Youtu, true, false),
            "falcon" => (Falcon, false, false),
            "mpt" => (Mpt, false, false),
            "starcoder" => (Starcoder, false, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" => (Gpt2, false, false),
            "jais-2" => (Jais2, false, false),
            "gemma4" | "granite-embed-multi-311m" => (Gemma4, false, false),
            "sarvam-moe" => (SarvamMoe, false, false),
            "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => (Gpt2, false, false),
            "whitespace" => (Whitespace, false, false),
            "refact" => (Refact, false, false),
            "command-r" => (CommandR, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => (Qwen2, false, false),
            "qwen35" => (Qwen35, false, false),
            "stablelm2" => (Stablelm2, false, false),
            "olmo" => (Olmo, false, false),
            "dbrx" => (Dbrx, false, false),
            "smaug-bpe" => (Smaug, false, false),
            "poro-chat" => (Poro, false, false),
            "chatglm-bpe" => (Chatglm4, false, false),
            "glm4" | "glm5" => (Chatglm4, true, false),
            "viking" => (Viking, false, false),
            "jais" => (Jais, false, false),
            "tekken" => (Tekken, true, true),
            "smollm" => (Smollm, false, false),
            "codeshell" => (Codeshell, false, false),
            "bloom" => (Bloom, false, false),
            "gpt3-finnish" => (Gpt3Finnish, false, false),
            "exaone" => (Exaone, false, false),
            "exaone4" => (Gpt2, false, false),
            "exaone-moe" => (ExaoneMoe, false, false),
            "chameleon" => (Chameleon, false, true),
            "minerva-7b" => (Minerva, false, false),
            "megrez" => (Qwen2, false, false),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" => (Gpt4o, false, false),
            "granite-embed-multi-97m" => (GraniteEmbMulti, true, false),
            "tiny_aya" | "cohere2moe" => (TinyAya, false, false),
            "superbpe" => (Superbpe, false, false),
            "trillion" => (Trillion, false, false),
            "granite-docling" => (GraniteDocling, false, false),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => (Bailingmoe, false, false),
            "seed-coder" => (SeedCoder, false, false),
            "hunyuan" => (Hunyuan, false, false),
            "hunyuan-dense" => (HunyuanDense, false, false),
            "hy_v4" => (HyV4, false, false),
            "joyai-llm" => (JoyaiLlm, false, false),
            "kimi-k2" => (KimiK2, false, false),
            "ufakzeka" => (Ufakzeka, false, false),
            "grok-2" => (Grok2, false, false),
            "afmoe" => (Afmoe, false, false),
            "laguna" => (Laguna, false, false),
            "minimax-m2" => (MinimaxM2, false, false),
            "solar-open" => (SolarOpen, false, false),
            "mellum2" => (Mellum2, false, false),
            _ => return None,
        };
        Some(Self {
            pre_type,
            ignore_merges,
            add_bos,
        })
    }
}

impl PreType {
    /// False where llama.cpp merges the raw UTF-8 text instead of GPT-2's byte alphabet
    /// (`byte_encode = false`: SentencePiece-style vocabularies with `<0xXX>` byte tokens).
    pub fn byte_level(self) -> bool {
        !matches!(self, Self::Gemma4 | Self::SarvamMoe | Self::Whitespace)
    }

    /// The steps, in order: each regex (see `regexes`) with what becomes of the text between
    /// its matches.
    pub fn steps(self) -> impl Iterator<Item = Step> {
        self.regexes().iter().map(|&regex| Step {
            regex,
            behavior: if regex == DIGITS_THREES_FROM_RIGHT {
                Behavior::MergedWithPrevious
            } else {
                Behavior::Isolated
            },
        })
    }

    /// The regexes, applied in order (`llm_tokenizer_bpe::regex_exprs`).
    pub fn regexes(self) -> &'static [&'static str] {
        use PreType::*;
        match self {
            Llama3 | Dbrx | Smaug | Chatglm4 => &[LLAMA3],
            Jais2 => &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
            ],
            DeepseekLlm => &[
                r"[\r\n]",
                r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                r"\s?[!-/:-~！-／：-～‘-‟\x{3000}-。]+",
                r"\s+$",
                r"[一-龥ࠀ-一가-\x{D7FF}]+",
                r"\p{N}+",
            ],
            Deepseek3Llm | HunyuanDense | JoyaiLlm | HyV4 => {
                &[r"\p{N}{1,3}", HAN_KANA, DEEPSEEK3_WORDS]
            }
            Spark2_5 => &[
                r"\p{N}{1,3}",
                HAN_KANA,
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##,
                DIGIT,
            ],
            Youtu => &[
                r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\x{3040}-ゟ゠-ヿ]+",
                r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            DeepseekCoder => &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[一-龥ࠀ-一가-\x{D7FF}]+",
                DIGIT,
            ],
            Falcon => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
            Starcoder | Refact | CommandR | Smollm | Codeshell | Exaone | Minerva | Mellum2 => {
                &[DIGIT, GPT2]
            }
            Gpt2 | Mpt | Olmo | Jais | Trillion | GraniteDocling => &[GPT2],
            Stablelm2 | Qwen2 | Hunyuan | SolarOpen | Grok2 => &[QWEN2],
            Qwen35 => &[QWEN35],
            Poro | Bloom | Gpt3Finnish => &[PORO],
            Viking => &[PORO, DIGIT],
            Tekken => &[TEKKEN],
            Chameleon => &[
                r"<sentinel:[0-9]+>",
                r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                r"([\t\n]|    |  )",
                DIGIT,
                r"[\p{P}!-/:-@\[-`{-~]",
                GPT2,
            ],
            Gpt4o | MinimaxM2 => &[GPT4O],
            GraniteEmbMulti => &[
                r"[^\r\n\p{L}\p{N}]?[[\p{L}\p{M}]&&[^a-z]]*[[\p{L}\p{M}]&&[^A-Z]]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[[\p{L}\p{M}]&&[^a-z]]+[[\p{L}\p{M}]&&[^A-Z]]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            TinyAya => &[
                DIGITS_THREES_FROM_RIGHT,
                r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            // `unicode_regex_split_custom_kimi_k2`, with its Han ranges (`unicode_cpt_is_han`);
            // its letter runs are any non-Han letters, whatever their case.
            KimiK2 => &[
                r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{2CEB0}-\x{2EBEF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{2CEB0}-\x{2EBEF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            // The second regex splits before each group of three digits that ends a run of
            // ASCII digits (empty matches).
            Superbpe => &[r"\p{N}+", r"(?=([0-9]{3})+(?![0-9]))"],
            Bailingmoe => &[
                r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
            ],
            SeedCoder => &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Ufakzeka => &[
                r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Afmoe => &[
                DIGITS_THREES_FROM_RIGHT,
                r"[一-鿿㐀-䶿豈-\x{FAFF}\x{3040}-ゟ゠-ヿ･-ﾟ⼀-\x{2FDF}เ-\x{0E7F}\x{0E80}-\x{0EFF}ក-\x{17FF}က-႟ꩠ-ꩿꧠ-\x{A9FF}가-\x{D7AF}ᄀ-ᇿ]+",
                DEEPSEEK3_WORDS,
            ],
            Laguna => &[LINES, QWEN2],
            ExaoneMoe => &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
            ],
            Gemma4 | SarvamMoe => &[LINES],
            Minicpm5 => &[
                r"\p{N}{1,3}",
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Whitespace => &[r"\S+"],
            Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        }
    }
}

/// The known name nearest to `name` (by edit distance), for an error's suggestion.
pub fn nearest_name(name: &str) -> Option<&'static str> {
    KNOWN_NAMES
        .iter()
        .map(|&k| (edit_distance(name, k), k))
        .filter(|&(d, k)| d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

/// Every `tokenizer.ggml.pre` value llama.cpp knows (the names `from_name` accepts).
pub const KNOWN_NAMES: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "kimi-k2",
    "ufakzeka",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
];

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_resolves_and_nothing_else() {
        for name in KNOWN_NAMES {
            assert!(PreTokenizer::from_name(name).is_some(), "{name}");
        }
        assert_eq!(PreTokenizer::from_name("smollm2"), None);
        assert_eq!(PreTokenizer::from_name(""), None);
        assert_eq!(nearest_name("smolm"), Some("smollm"));
        assert_eq!(nearest_name("qwen-2"), Some("qwen2"));
        assert_eq!(nearest_name("something-else-entirely"), None);
    }

    #[test]
    fn every_regex_compiles_as_tokenizers_compiles_it() {
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::SplitDelimiterBehavior::Isolated;
        for name in KNOWN_NAMES {
            let Some(p) = PreTokenizer::from_name(name) else {
                panic!("{name}");
            };
            for re in p.pre_type.regexes() {
                if let Err(e) = Split::new(SplitPattern::Regex(re.to_string()), Isolated, false) {
                    panic!("{name} ({:?}): {re}: {e}", p.pre_type);
                }
            }
        }
    }

    #[test]
    fn smollm_splits_digits_before_gpt2() {
        let p = PreTokenizer::from_name("smollm").map(|p| p.pre_type);
        assert_eq!(p, Some(PreType::Smollm));
        assert_eq!(PreType::Smollm.regexes(), &[DIGIT, GPT2]);
        // "default" is llama.cpp's own four-step split, not GPT-2's.
        assert_eq!(PreType::Default.regexes().len(), 4);
    }
}
