//! llama.cpp's SentencePiece tokenizer written out plainly (`src/llama-vocab.cpp`,
//! `llm_tokenizer_spm_session::tokenize` and the SPM branch of `llama_vocab::impl::tokenize`),
//! the slow twin that temper's rebuilt tokenizer.json is checked against on texts llama.cpp
//! keeps no reference ids for. For text with no special tokens in it.

use std::collections::{BinaryHeap, HashMap};

use temper_gguf::GgufFile;

pub struct LlamaSpm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    add_space_prefix: bool,
}

/// One bigram in the work queue: llama.cpp's `llm_bigram_spm`, ordered as its comparator
/// orders it (highest score first, then lowest left index).
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

struct Symbol {
    start: usize,
    n: usize,
    prev: isize,
    next: isize,
}

impl LlamaSpm {
    pub fn new(file: &GgufFile) -> Self {
        let tokens = file.opt_strings("tokenizer.ggml.tokens").unwrap().unwrap();
        let scores = file.opt_floats("tokenizer.ggml.scores").unwrap().unwrap();
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let add_space_prefix = file
            .opt_bool("tokenizer.ggml.add_space_prefix")
            .unwrap()
            .unwrap_or(true);
        LlamaSpm {
            ids,
            scores,
            add_space_prefix,
        }
    }

    /// llama_tokenize(text, add_special = false) for text with no special tokens.
    pub fn encode(&self, raw: &str) -> Vec<u32> {
        if raw.is_empty() {
            return Vec::new();
        }
        let mut text = String::new();
        if self.add_space_prefix {
            text.push(' ');
        }
        text.push_str(raw);
        let text = text.replace(' ', "\u{2581}");

        let mut symbols: Vec<Symbol> = Vec::new();
        let mut offs = 0;
        for (i, c) in text.chars().enumerate() {
            let n = c.len_utf8();
            symbols.push(Symbol {
                start: offs,
                n,
                prev: i as isize - 1,
                next: if offs + n == text.len() {
                    -1
                } else {
                    i as isize + 1
                },
            });
            offs += n;
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<String, (usize, usize)> = HashMap::new();
        let try_add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<String, (usize, usize)>,
                       left: isize,
                       right: isize| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
            let s = &text[l.start..l.start + l.n + r.n];
            let Some(&id) = self.ids.get(s) else {
                return;
            };
            queue.push(Bigram {
                left: left as usize,
                right: right as usize,
                score: self.scores[id as usize],
                size: s.len(),
            });
            rev.insert(s.to_string(), (left as usize, right as usize));
        };
        for i in 1..symbols.len() {
            try_add(
                &symbols,
                &mut queue,
                &mut rev_merge,
                i as isize - 1,
                i as isize,
            );
        }
        while let Some(b) = queue.pop() {
            let (ln, rn) = (symbols[b.left].n, symbols[b.right].n);
            if ln == 0 || rn == 0 || ln + rn != b.size {
                continue;
            }
            symbols[b.left].n += rn;
            symbols[b.right].n = 0;
            let next = symbols[b.right].next;
            symbols[b.left].next = next;
            if next >= 0 {
                symbols[next as usize].prev = b.left as isize;
            }
            let prev = symbols[b.left].prev;
            try_add(&symbols, &mut queue, &mut rev_merge, prev, b.left as isize);
            try_add(&symbols, &mut queue, &mut rev_merge, b.left as isize, next);
        }
        let mut out = Vec::new();
        let mut i = 0isize;
        while i != -1 {
            self.resegment(&text, &symbols, &rev_merge, i as usize, &mut out);
            i = symbols[i as usize].next;
        }
        out
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        rev_merge: &HashMap<String, (usize, usize)>,
        i: usize,
        out: &mut Vec<u32>,
    ) {
        let s = &text[symbols[i].start..symbols[i].start + symbols[i].n];
        if let Some(&id) = self.ids.get(s) {
            out.push(id);
            return;
        }
        match rev_merge.get(s) {
            None => {
                for b in s.bytes() {
                    out.push(self.ids[&format!("<0x{b:02X}>")]);
                }
            }
            Some(&(l, r)) => {
                self.resegment(text, symbols, rev_merge, l, out);
                self.resegment(text, symbols, rev_merge, r, out);
            }
        }
    }
}
