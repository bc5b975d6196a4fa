"""pvq.Llama on bad input: Python exceptions with the runtime's message, never a crash."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from bindings_util import ROOT, import_pvq

pvq = import_pvq()


@pytest.fixture(scope="module")
def llm(smollm2):
    m = pvq.Llama(str(smollm2.f16_gguf), n_ctx=64, n_threads=2, verbose=False)
    yield m
    m.close()


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(pvq.ModelLoadError, match="nope.gguf") as e:
        pvq.Llama(str(missing), verbose=False)
    assert isinstance(e.value, ValueError) and e.value.status == 1  # PVQ_ERR_IO


@pytest.mark.parametrize("damage", ["not gguf", "truncated"])
def test_corrupt_file(tmp_path, smollm2, damage):
    bad = tmp_path / "bad.gguf"
    if damage == "not gguf":
        bad.write_bytes(b"this is not a model\n" * 100)
    else:
        with open(smollm2.f16_gguf, "rb") as f:
            bad.write_bytes(f.read(3_000_000))
    with pytest.raises(pvq.ModelLoadError) as e:
        pvq.Llama(str(bad), verbose=False)
    assert e.value.status == 2 and str(e.value)  # PVQ_ERR_FORMAT, with the runtime's explanation


def test_prompt_longer_than_the_context(llm):
    prompt = "word " * 100
    assert len(llm.tokenize(prompt.encode())) > llm.n_ctx()
    with pytest.raises(pvq.ContextFullError, match="context holds 64"):
        llm(prompt, max_tokens=4)
    with pytest.raises(ValueError):  # as llama-cpp-python: stream=True fails at the call, not on iteration
        llm(prompt, max_tokens=4, stream=True)
    llm.reset()
    with pytest.raises(pvq.ContextFullError) as e:  # straight to the runtime
        llm.eval(llm.tokenize(prompt.encode()))
    assert e.value.status == 5 and str(e.value)
    llm.reset()
    assert llm("Hello", temperature=0, max_tokens=4)["usage"]["completion_tokens"] == 4  # still usable


def test_generation_stops_at_the_end_of_the_context(llm):
    r = llm("Count: 1, 2, 3,", temperature=0, max_tokens=1000)
    assert r["usage"]["total_tokens"] == llm.n_ctx() and r["choices"][0]["finish_reason"] == "length"


def test_bad_tokens_and_text(llm):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        llm.detokenize([llm.n_vocab()])
    llm.reset()
    with pytest.raises(pvq.PvqError, match=str(llm.n_vocab() + 5)):
        llm.eval([1, llm.n_vocab() + 5])
    with pytest.raises(pvq.PvqError):
        llm.tokenize(b"invalid \xff\xfe utf-8")
    with pytest.raises(ValueError, match="logits_all"):
        llm("Hi", logprobs=2)
    with pytest.raises(NotImplementedError, match="presence_penalty"):
        llm("Hi", presence_penalty=0.5)


def test_use_after_close(smollm2):
    m = pvq.Llama(str(smollm2.f16_gguf), n_ctx=64, n_threads=2, verbose=False)
    m.close()
    m.close()  # twice is fine
    for call in (lambda: m.tokenize(b"Hi"), lambda: m.detokenize([1]), lambda: m.eval([1]), lambda: m("Hi"),
                 lambda: m.create_chat_completion([{"role": "user", "content": "Hi"}]), m.n_ctx):
        with pytest.raises(pvq.PvqError, match="is closed"):
            call()


@pytest.mark.parametrize("lib", ["libmissing.so", "libbroken.so"])
def test_library_not_found_is_an_import_error(tmp_path, lib):
    (tmp_path / "libbroken.so").write_bytes(b"not a library")
    env = dict(os.environ, PVQ_LIB=str(tmp_path / lib), PYTHONPATH=str(ROOT / "bindings"))
    r = subprocess.run([sys.executable, "-c", "import pvq"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "ImportError" in r.stderr and lib in r.stderr


def test_close_while_another_thread_generates(smollm2):
    """close() waits for the runtime call in flight; the generating thread then gets a PvqError, not a crash."""
    m = pvq.Llama(str(smollm2.f16_gguf), n_ctx=256, n_threads=2, verbose=False)
    errors, started = [], threading.Event()

    def work():
        try:
            for _ in m("Once upon a time", temperature=0, max_tokens=200, stream=True):
                started.set()
        except pvq.PvqError as e:
            errors.append(e)
        started.set()

    worker = threading.Thread(target=work)
    worker.start()
    started.wait(60)
    m.close()
    worker.join(60)
    assert not worker.is_alive() and len(errors) == 1 and "is closed" in str(errors[0])


def test_runtime_calls_release_the_gil(smollm2):
    """While one thread evaluates a long prompt in C, Python code in another thread keeps running."""
    m = pvq.Llama(str(smollm2.f16_gguf), n_ctx=512, n_batch=512, n_threads=1, verbose=False)
    tokens = m.tokenize(b"The history of the city goes back many centuries. " * 40)[:480]
    done, spans = threading.Event(), []

    def work():
        t = time.perf_counter()
        m.eval(tokens)
        spans.append(time.perf_counter() - t)
        done.set()

    worker = threading.Thread(target=work)
    last, gap = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    worker.join()
    m.close()
    # Holding the GIL for the whole eval would stall this loop for about as long as the eval itself.
    assert spans[0] > 0.05 and gap < spans[0] / 3, (gap, spans[0])
