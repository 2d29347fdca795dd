"""Reads the TensorBoard event files of a run folder with TensorBoard's own reader and prints
every scalar as JSON: {"tag": [[step, value], ...], ...}. Needs `pip install tensorboard`.

    python3 scripts/check_tensorboard.py RUN_DIR/runs
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
