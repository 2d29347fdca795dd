"""Writes tests/fixtures/data/*.parquet for crates/temper-data/tests/sources.rs.

The rows are the same as the JSONL written by that test (keep them in step): a
messages column of list<struct<role, content>> plus an int id, and a prompt/completion
file with a null-free string schema (and the
same compressed with zstd, which temper does not read). pyarrow's defaults (snappy, v2 pages) are used, as
`datasets` would.

    PYTHONPATH=.py-site .venv/bin/python scripts/make_data_fixtures.py
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "data"

MESSAGES = [
    {"id": 1, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello world"}]},
    {"id": 2, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
    ]},
    {"id": 3, "messages": [{"role": "user", "content": "Héllo ünïcode ✓"}, {"role": "assistant", "content": "again"}]},
]

PROMPT_COMPLETION = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"prompt": "The capital of Italy is", "completion": " Rome."},
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # Two row groups, so reading goes across a row-group boundary.
    pq.write_table(pa.Table.from_pylist(MESSAGES), OUT / "messages.parquet", row_group_size=2)
    pq.write_table(pa.Table.from_pylist(PROMPT_COMPLETION), OUT / "prompt_completion.parquet")
    # A codec temper is not built with: must be an error that says which codecs it reads.
    pq.write_table(pa.Table.from_pylist(PROMPT_COMPLETION), OUT / "zstd.parquet", compression="zstd")
    for p in sorted(OUT.glob("*.parquet")):
        print(p, pq.read_metadata(p).row_group(0).column(0).compression)


if __name__ == "__main__":
    main()
