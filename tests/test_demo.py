"""`make demo`'s PVQ text reads as text: its greedy answer to the demo's question (asked through the model's
chat template) is not a loop."""
from __future__ import annotations

from collections import Counter


def test_demo_continuation_is_not_degenerate(smollm2):
    from models.demo import N_PREDICT, continuation
    from models.smollm2 import pvq_gguf
    text, ids = continuation(pvq_gguf(3.25))
    print(repr(text))
    assert 16 <= len(ids) <= N_PREDICT, text  # an end of text after 16 tokens is fine, an empty answer is not
    grams = Counter(tuple(ids[i:i + 3]) for i in range(len(ids) - 2))
    gram, count = grams.most_common(1)[0]
    assert count < 3, f"the 3-gram {gram} occurs {count} times in {text!r}"
