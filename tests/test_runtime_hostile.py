"""Hostile and bad input: corrupted GGUF files, prompts longer than the context, invalid UTF-8. Every case
must end in an error message and exit status 1, never a crash or a sanitizer report. pvqrun runs from the
ASan+UBSan build here (make -C runtime asan), whatever PVQ_RUNTIME_BUILD says."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from runtime_clib import gguf_layout, run_pvqrun, tiny_gguf

ASAN = "build-asan"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", wtype="q8_0")
    return path, path.read_bytes()


def _run(path, *extra, prompt="the"):
    return run_pvqrun(["-m", path, "-p", prompt, "-n", 4, "--temp", 0, "-t", 2, *extra], variant=ASAN, timeout=120)


def _expect_error(r, what):
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, f"{what}: exit {r.returncode}\n{err[-3000:]}"
    assert err.startswith("error: "), f"{what}: {err[-2000:]}"
    assert "Sanitizer" not in err and "runtime error" not in err, f"{what}: {err[-3000:]}"
    return err


def test_intact_file_generates_under_sanitizers(good):
    path, _ = good
    r = _run(path)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout.startswith(b"the")


def test_truncated_at_every_section_boundary(good, tmp_path):
    path, data = good
    lay = gguf_layout(data)
    cuts = {0, 3, 4, 8, 16, 23, 24, lay["header_end"], lay["data_start"], len(data) - 1}
    for kv in lay["kv"]:
        cuts |= {kv["start"], kv["start"] + 8, kv["type"], kv["value"], kv["value"] + 1}
    for t in lay["tensors"]:
        cuts |= {t["start"], t["n_dims"], t["dims"], t["type"], t["offset"]}
    cuts |= set(lay["tensor_data"][1:])
    bad = tmp_path / "cut.gguf"
    for cut in sorted(c for c in cuts if c < len(data)):
        bad.write_bytes(data[:cut])
        err = _expect_error(_run(bad), f"truncated at {cut}")
        assert "truncated" in err or "outside the file" in err or "runs past the end" in err, (cut, err)


def _patched(tmp_path, data, at, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    p = tmp_path / "patched.gguf"
    p.write_bytes(bytes(b))
    return p


def test_corrupted_fields_are_refused(good, tmp_path):
    path, data = good
    lay = gguf_layout(data)
    kv = {k["key"]: k for k in lay["kv"]}
    t0, t1 = lay["tensors"][0], lay["tensors"][1]
    cases = {
        "bad magic": (0, "<4s", b"GGUX", "bad magic"),
        "version 1": (4, "<I", 1, "version"),
        "version 99": (4, "<I", 99, "version"),
        "tensor count 2^62": (8, "<Q", 1 << 62, "tensor count"),
        "kv count 2^62": (16, "<Q", 1 << 62, "key count"),
        "huge key length": (lay["kv"][0]["key_len"], "<Q", (1 << 63) + 5, "runs past the end"),
        "unknown value type": (lay["kv"][0]["type"], "<I", 77, "unknown value type"),
        "huge string value": (kv["general.architecture"]["value"], "<Q", 1 << 60, "runs past the end"),
        "huge array count": (kv["tokenizer.ggml.token_type"]["count"], "<Q", 1 << 61, "runs past the end"),
        "nested array": (kv["tokenizer.ggml.token_type"]["value"], "<I", 9, "array element type"),
        "huge token string": (kv["tokenizer.ggml.tokens"]["first"], "<Q", 1 << 62, "runs past the end"),
        "zero dims": (t0["n_dims"], "<I", 0, "dimensions"),
        "five dims": (t0["n_dims"], "<I", 5, "dimensions"),
        "absurd dim": (t0["dims"], "<Q", 1 << 50, "absurd dimension"),
        "zero dim": (t0["dims"], "<Q", 0, "absurd dimension"),
        "tensor larger than the file": (t0["dims"] + 8, "<Q", (1 << 40), "outside the file"),
        "unknown tensor type": (t0["type"], "<I", 200, "unsupported tensor type"),
        "Q4_0 tensor type": (t0["type"], "<I", 2, "unsupported tensor type"),
        "offset past end": (t1["offset"], "<Q", len(data), "outside the file"),
        "huge offset": (t1["offset"], "<Q", (1 << 64) - 32, "outside the file"),
        "misaligned offset": (t1["offset"], "<Q", t1["rel_offset"] + 4, "not aligned"),
        "row not whole blocks": (t0["dims"], "<Q", 48, "not a multiple"),
        "unknown architecture": (kv["general.architecture"]["value"] + 8, "<5s", b"gemma", "unsupported architecture"),
        "bad block count": (kv["llama.block_count"]["value"], "<I", 0, "block_count"),
        "heads do not divide": (kv["llama.attention.head_count_kv"]["value"], "<I", 3, "heads"),
        "vocab size mismatch": (kv["tokenizer.ggml.token_type"]["count"], "<Q", 5, ""),
        "unknown tokenizer": (kv["tokenizer.ggml.model"]["value"] + 8, "<4s", b"t5xx", "tokenizer"),
    }
    for name, (at, fmt, value, expect) in cases.items():
        err = _expect_error(_run(_patched(tmp_path, data, at, fmt, value)), name)
        assert expect in err, (name, err)
    # element count overflowing 64 bits: 2^40 x 2^40
    p = _patched(tmp_path, _patched(tmp_path, data, t0["dims"], "<Q", 1 << 40).read_bytes(), t0["dims"] + 8, "<Q",
                 1 << 40)
    assert "absurd dimension" in _expect_error(_run(p), "dims overflow")


def test_duplicate_tensor_name_refused(good, tmp_path):
    path, data = good
    ts = gguf_layout(data)["tensors"]
    names = [data[t["start"] + 8:t["n_dims"]] for t in ts]
    i, j = next((i, j) for i in range(len(ts)) for j in range(i + 1, len(ts)) if len(names[i]) == len(names[j]))
    b = bytearray(data)
    b[ts[j]["start"] + 8:ts[j]["n_dims"]] = names[i]
    p = tmp_path / "dup.gguf"
    p.write_bytes(bytes(b))
    assert "duplicate tensor name" in _expect_error(_run(p), "duplicate")


def test_random_byte_flips_never_crash(good, tmp_path):
    path, data = good
    lay = gguf_layout(data)
    rng = np.random.default_rng(1)
    p = tmp_path / "flip.gguf"
    for i in range(60):
        b = bytearray(data)
        for at in rng.integers(0, lay["data_start"], size=1 + i % 4):
            b[at] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(b))
        r = _run(p)
        err = r.stderr.decode(errors="replace")
        assert r.returncode in (0, 1), (i, r.returncode, err[-3000:])
        assert "Sanitizer" not in err and "runtime error" not in err, (i, err[-3000:])
        if r.returncode:
            assert err.startswith("error: "), err


def test_missing_and_non_gguf_files(tmp_path):
    err = _expect_error(_run(tmp_path / "nope.gguf"), "missing")
    assert "cannot open" in err
    (tmp_path / "text.gguf").write_text("hello, this is not a model at all, just some text here")
    assert "bad magic" in _expect_error(_run(tmp_path / "text.gguf"), "text")
    assert "is not a regular file" in _expect_error(_run(tmp_path), "directory")


def test_prompt_longer_than_context(good):
    path, _ = good
    err = _expect_error(_run(path, "-c", 8, prompt="the " * 20), "long prompt")
    assert "longer than the context (-c 8)" in err


def test_invalid_utf8_prompt_and_file(good, tmp_path):
    path, _ = good
    f = tmp_path / "bad.txt"
    f.write_bytes(b"hello \xff\xfe world")
    r = run_pvqrun(["-m", path, "-f", f, "-n", 2, "-t", 2], variant=ASAN, timeout=60)
    assert "not valid UTF-8" in _expect_error(r, "invalid utf-8 file")
    f.write_bytes(b"caf\xc3")  # truncated 2-byte sequence
    r = run_pvqrun(["-m", path, "-f", f, "--perplexity", "-c", 8], variant=ASAN, timeout=60)
    assert "not valid UTF-8" in _expect_error(r, "truncated utf-8 file")


def test_bad_flags(good):
    path, _ = good
    for args, expect in ([["-n"], "needs a value"], [["-t", "0"], "expects an integer"], [["--bogus", "1"], "unknown flag"],
                         [["--temp", "nan"], "expects a number"], [["--kl-divergence"], "needs --kl-divergence-base"]):
        r = run_pvqrun(["-m", path, "-p", "x", *args], variant=ASAN, timeout=60)
        assert r.returncode == 2 and expect in r.stderr.decode(), (args, r.stderr)
