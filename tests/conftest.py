"""Shared fixtures: the real SmolLM2 model, a small SentencePiece Llama, the peer (llama-cpp-python)."""
from __future__ import annotations

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
