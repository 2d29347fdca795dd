#!/usr/bin/env python3
"""Token-id fixtures for fill-in-the-middle (FIM) and repository tokens in text, made by
llama.cpp itself (the driver and sdist of make_llama_cpp_token_fixtures.py).

llama.cpp (`llama_vocab::impl::load`, "auto-detect special tokens by text") makes the token
whose text is a known FIM prefix / suffix / middle / pad / repo / file-separator marker a
control token when the GGUF names no id for that kind, whatever type the file gives it:
deepseek-coder's `<｜fim▁begin｜>` is user-defined in the file, so llama.cpp does not match it
in text with parse_special off. Writes ``tests/fixtures/gguf/fim_tokens.json``: for the
vocabularies of llama.cpp's `models/` folder that hold such tokens, the ids llama.cpp gives
a few code and FIM texts with parse_special off and on (add_special off).

Usage:
  python scripts/make_fim_token_fixtures.py [--driver PATH] [--models DIR]
Without --driver it builds libllama and the driver as make_llama_cpp_token_fixtures.py does
(cmake, ninja, a C++17 compiler); --driver takes one already built from that script's DRIVER
source against the same llama.cpp (0.3.36).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_llama_cpp_token_fixtures as lcpp  # noqa: E402

VOCABS = ["deepseek-coder", "starcoder", "refact"]

TEXTS = [
    "<｜fim▁begin｜>def add(a, b):\n<｜fim▁hole｜>\n    return c<｜fim▁end｜>",
    "x <｜fim▁begin｜> y",
    "<fim_prefix>def f():\n<fim_suffix>\n    pass<fim_middle>",
    "<reponame>temper<fim_pad>",
    "<fim_prefix>  spaced  <fim_suffix>\t<fim_middle>\n",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", type=Path)
    ap.add_argument("--models", type=Path)
    ap.add_argument("--cache", type=Path, default=lcpp.ROOT / "target" / "artifacts")
    ap.add_argument("--build", type=Path, default=lcpp.ROOT / "target" / "llama-cpp-build")
    args = ap.parse_args()
    if args.driver is None or args.models is None:
        src = lcpp.unpack(lcpp.fetch_sdist(args.cache), args.cache)
        driver = args.driver or lcpp.build_driver(src, args.build)
        models = args.models or src / "models"
    else:
        driver, models = args.driver, args.models
    cases = []
    for name in VOCABS:
        gguf = models / f"ggml-vocab-{name}.gguf"
        for parse_special in (False, True):
            ids = lcpp.llama_cpp_ids(driver, gguf, TEXTS, False, parse_special)
            for text, want in zip(TEXTS, ids):
                cases.append({"vocab": name, "parse_special": parse_special, "text": text, "ids": want})
    out = lcpp.OUT / "fim_tokens.json"
    text = json.dumps({"llama_cpp": "0.3.36 (llama-cpp-python sdist)", "cases": cases},
                      ensure_ascii=False, indent=1)
    out.write_text(lcpp.compact_id_lists(text) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
