"""Shared fixtures: the real SmolLM2 model, a small SentencePiece Llama, the peer (llama-cpp-python)."""
from __future__ import annotations

import inspect

import pytest

from models import EVAL_TEXT


@pytest.fixture(scope="session")
def smollm2():
    from models.smollm2 import ensure
    return ensure()


@pytest.fixture(scope="session")
def spm_model_dir(tmp_path_factory):
    """HF directory of a 2-layer random Llama with a SentencePiece tokenizer trained on the eval text."""
    from models.spm_fixture import build
    return build(tmp_path_factory.mktemp("spm-llama"))


@pytest.fixture(scope="session")
def eval_text() -> str:
    return EVAL_TEXT.read_text(encoding="utf-8")


def peer_llama(path, **kw):
    """llama.cpp through llama-cpp-python, quiet, on 2 threads."""
    from llama_cpp import Llama
    kw.setdefault("n_threads", 2)
    return Llama(str(path), verbose=False, **kw)


# What makes a test heavy: the downloaded SmolLM2 (and every file converted from it), the peer
# (llama-cpp-python), a fresh virtual environment, or seconds of start-up per test (the converter's command
# line in a new Python that imports torch; test_pvq_triton.py, Triton's interpreter, marks itself), or tens of
# seconds of compute (quantize_checkpoint: GPTQ, PVQ and scale tuning over every layer of a model, ~25 s each).
# `make test-fast` runs the rest (-m "not heavy"): the in-process unit tests.
HEAVY_FIXTURES = {"smollm2"}
HEAVY_WORDS = ("llama_cpp", "peer_llama", "models.smollm2", "PEER_ISA", "fresh_venv", "run_cli(",
               "quantize_checkpoint(")


def pytest_collection_modifyitems(config, items):
    for item in items:
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn else ""
        except (OSError, TypeError):
            source = ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & HEAVY_FIXTURES or any(w in source for w in HEAVY_WORDS) or \
                any(w in " ".join(fixtures) for w in ("peer", "pvq_smollm2", "models")):
            item.add_marker(pytest.mark.heavy)
