"""Block streaming (stream.py, torch_model.StreamedBlocks): the streamed passes compute what the whole model
computes, bit for bit, holding one block."""
from __future__ import annotations

import pytest
import torch

from pvq_convert.rotate import Rotation, rotate_model
from pvq_convert.stream import Spill, streamed_backward
from pvq_convert.torch_model import StreamedBlocks, load_model


def test_streamed_blocks_make_each_block_once_per_pass_and_hold_one():
    made = []
    blocks = StreamedBlocks(3, lambda i: made.append(i) or {"w": torch.full((2,), float(i))})
    assert [float(b["w"][0]) for b in blocks] == [0.0, 1.0, 2.0] and made == [0, 1, 2]
    blocks[2]["w"] += 1                     # the held block keeps its changes while it is held
    assert float(blocks[2]["w"][0]) == 3.0 and made == [0, 1, 2]
    assert float(blocks[1]["w"][0]) == 1.0 and float(blocks[2]["w"][0]) == 2.0 and made == [0, 1, 2, 1, 2]
    doubled = blocks.map(lambda b: {"w": 2 * b["w"]})
    assert float(doubled[1]["w"][0]) == 2.0 and made[-1] == 1


def test_streamed_model_gives_the_logits_of_the_whole_model(spm_model_dir):
    tokens = torch.arange(40) % 300
    whole = rotate_model(load_model(spm_model_dir), Rotation(seed=2), tie_head=True)
    streamed = rotate_model(load_model(spm_model_dir, streamed=True), Rotation(seed=2), tie_head=True)
    assert isinstance(streamed.blocks, StreamedBlocks)
    assert torch.equal(streamed(tokens), whole(tokens))


@pytest.mark.parametrize("head_rows", [None, 16])
def test_streamed_backward_gives_the_gradients_of_the_whole_graph(spm_model_dir, head_rows):
    """Row factors on every linear output (the scale tuning's leaves) and a loss on the logits: the same
    gradients, bit for bit, as one backward pass through the whole graph, also with the head run a few tokens at
    a time (the loss then a sum of the steps' sums: the same up to rounding)."""
    model = rotate_model(load_model(spm_model_dir), Rotation(seed=1))
    tokens = (torch.arange(64) * 7) % 2000
    target = torch.log_softmax(torch.randn(64, 2000, generator=torch.Generator().manual_seed(0)), -1)

    def run(backward):
        g = torch.Generator().manual_seed(1)
        factors = {}

        def hook(layer, name, y):
            f = factors.setdefault((layer, name), (1 + 0.01 * torch.randn(y.shape[-1], generator=g)).requires_grad_())
            return y * f

        def loss(logits, rows=slice(None)):
            t = target[rows]
            return (t.exp() * (t - torch.log_softmax(logits, -1))).sum() / len(target)
        value = backward(hook, loss)
        return value, {k: f.grad for k, f in factors.items()}

    def whole(hook, loss):
        value = loss(model(tokens, out_hook=hook))
        value.backward()
        return value.detach()

    want_loss, want = run(whole)
    got_loss, got = run(lambda hook, loss: streamed_backward(model, tokens, loss, hook, head_rows))
    assert want.keys() == got.keys() and len(want) == 14
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=0)
    if head_rows is None:
        assert torch.equal(got_loss, want_loss)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_spill_keeps_tensors_on_disk():
    spill = Spill()
    a = torch.arange(12, dtype=torch.float32).view(3, 4)
    spill["a"], spill[0] = a[1], a.half()
    assert torch.equal(spill["a"], a[1]) and spill[0].dtype == torch.float16 and len(spill) == 2
    del spill["a"]
    spill["b"] = a
    assert "a" not in spill and torch.equal(spill["b"], a) and torch.equal(spill[0], a.half())
