#!/usr/bin/env python3
"""SentencePiece-style tokenizer.json fixtures (Gemma's BPE with byte fallback, and a
Unigram with Metaspace), with the ids transformers' fast tokenizers give for a few texts.

Writes tests/fixtures/tokenizers/<name>/{tokenizer.json, tokenizer_config.json} and
tests/fixtures/tokenizers/<name>/expected.json ({"cases": [{"text", "ids"}]}: ids with the
special tokens transformers adds, from AutoTokenizer.from_pretrained on the folder).

Both tokenizers are trained here on a small corpus (no download), shaped as the real files:
  gemma_bpe: normalizer Replace(" " -> "\u2581"), no pre-tokenizer, BPE with byte_fallback and
             <0x00>..<0xFF> byte tokens, decoder Replace + ByteFallback + Fuse, a template
             post-processor putting <bos> first, tokenizer class GemmaTokenizer.
  unigram:   Metaspace pre-tokenizer, Unigram model (T5 / older SentencePiece exports) on a
             fixed vocabulary built from the corpus (Unigram training is not repeatable).

Usage: python scripts/make_sentencepiece_tokenizer_fixtures.py
Needs tokenizers and transformers.
"""

import json
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Gemma models use a SentencePiece vocabulary with byte fallback.",
    "1. First step\n2. Second step\n\n3. Third   step with   spaces",
    "def add(a, b):\n    return a + b\n",
    "Numbers like 12345 and 3.14159 appear in text.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El zorro marrón rápido salta sobre el perro perezoso.",
] * 20

TEXTS = [
    "The quick brown fox.",
    "  leading spaces and trailing  ",
    "1. First\n2. Second\n\n10. Tenth",
    "unseen: \u00e9\u00e8 \u4f60\u597d \U0001F600 tab\there",
    "def f(x):\n    return x * 2",
    "",
]

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]


def gemma_bpe():
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL + bytes_,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    # Gemma's files carry <bos> in a template post-processor.
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
              "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>"}
    return tok, config


def unigram():
    # A fixed vocabulary (Unigram training is not deterministic from run to run): every
    # character of the corpus, "\u2581" + each word, and each word's first three letters,
    # scored by frequency rank so that longer, frequent pieces win.
    words, chars = {}, set()
    for line in CORPUS:
        for w in line.split():
            words[w] = words.get(w, 0) + 1
            chars.update(w)
    ranked = sorted(words, key=lambda w: (-words[w], w))
    pieces = [(t, 0.0) for t in SPECIAL] + [("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in sorted(chars)]
    seen = {p for p, _ in pieces}
    for i, w in enumerate(ranked):
        for piece, score in (("\u2581" + w, -1.0 - 0.01 * i), (w[:3], -3.0 - 0.01 * i)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score))
    tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIAL.index("<unk>")))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
              "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return tok, config


def main():
    root = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizers"
    for name, make in [("gemma_bpe", gemma_bpe), ("unigram", unigram)]:
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        tok, config = make()
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        hf = AutoTokenizer.from_pretrained(out)
        cases = [{"text": t, "ids": hf(t, add_special_tokens=True)["input_ids"]} for t in TEXTS]
        for c in cases:
            assert hf.decode(c["ids"], skip_special_tokens=True) is not None
        (out / "expected.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: {len(tok.get_vocab())} tokens, {size} B, {type(hf).__name__}")


if __name__ == "__main__":
    main()
