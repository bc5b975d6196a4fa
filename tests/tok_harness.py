"""Test harness for runtime/src/tokenizer.c: builds it (with unicode.c and its tables) into a shared
library, cached by source hash, and wraps it with ctypes. Vocabularies come from GGUF files (read with
gguf.GGUFReader, keys as llama.cpp reads them) or from a SentencePiece model."""
from __future__ import annotations

import ctypes as C
import hashlib
import os
import pickle
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "runtime" / "src"
SOURCES = ["tokenizer.c", "unicode.c", "unicode_tables.c"]
HEADERS = ["tokenizer.h", "unicode.h"]

SPM, BPE = 0, 1
PRE = {"default": 0, "gpt-2": 1, "llama-bpe": 2, "llama3": 2, "llama-v3": 2, "smollm": 3, "qwen2": 4}
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6
ERR_UTF8, ERR_NOMEM, ERR_TOO_LONG, ERR_ID = -2**31, -2**31 + 1, -2**31 + 2, -2**31 + 3


def build(sanitize: bool = False) -> Path:
    """Compiles the tokenizer into $PVQ_CACHE/clib; sanitize adds ASan and UBSan."""
    flags = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-shared", "-fPIC"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    h = hashlib.sha256(" ".join(flags).encode())
    for name in SOURCES + HEADERS:
        h.update((SRC / name).read_bytes())
    cache = _cache_dir() / "clib"
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"libpvqtok-{'asan-' if sanitize else ''}{h.hexdigest()[:16]}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["cc", *flags, *[str(SRC / s) for s in SOURCES], "-o", str(tmp)], check=True)
        tmp.replace(lib)
    return lib


class TokStr(C.Structure):
    _fields_ = [("ptr", C.c_void_p), ("len", C.c_size_t)]


class Desc(C.Structure):
    _fields_ = [("kind", C.c_int), ("pre", C.c_int), ("n_tokens", C.c_uint32), ("tokens", C.POINTER(TokStr)),
                ("scores", C.POINTER(C.c_float)), ("types", C.POINTER(C.c_int32)), ("n_merges", C.c_uint32),
                ("merges", C.POINTER(TokStr)), ("bos_id", C.c_int32), ("eos_id", C.c_int32),
                ("unk_id", C.c_int32), ("pad_id", C.c_int32), ("add_bos", C.c_int), ("add_eos", C.c_int),
                ("add_space_prefix", C.c_int)]


@dataclass
class Vocab:
    """What tok_vocab_desc holds, in Python."""
    kind: int
    tokens: list[bytes]
    scores: np.ndarray | None = None
    types: np.ndarray | None = None
    merges: list[bytes] = field(default_factory=list)
    pre: int = 0
    bos: int = -1
    eos: int = -1
    unk: int = -1
    pad: int = -1
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False


def _strings(field_) -> list[bytes]:
    return [bytes(field_.parts[i]) for i in field_.data]


def _scalar(reader, key, default):
    f = reader.fields.get(key)
    return default if f is None else f.parts[f.data[0]][0].item()


def _cache_dir() -> Path:
    return Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq"))


def vocab_from_gguf(path) -> Vocab:
    """read_gguf_vocab, cached in $PVQ_CACHE by file name, size and time (GGUFReader takes seconds on
    large vocabularies)."""
    st = Path(path).stat()
    key = hashlib.sha256(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_dir() / "tok-vocab" / f"{key}.pkl"
    if cached.exists():
        return pickle.loads(cached.read_bytes())
    v = read_gguf_vocab(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(v))
    tmp.replace(cached)
    return v


def read_gguf_vocab(path) -> Vocab:
    """Reads the tokenizer.ggml.* keys with the defaults llama.cpp applies (see tokenizer.h)."""
    import gguf
    r = gguf.GGUFReader(str(path))
    model = bytes(r.fields["tokenizer.ggml.model"].parts[r.fields["tokenizer.ggml.model"].data[0]]).decode()
    kind = {"llama": SPM, "gpt2": BPE}[model]
    pre_f = r.fields.get("tokenizer.ggml.pre")
    pre_name = bytes(pre_f.parts[pre_f.data[0]]).decode() if pre_f else "default"
    pre = PRE[pre_name] if kind == BPE else 0
    scores = r.fields.get("tokenizer.ggml.scores")
    types = r.fields.get("tokenizer.ggml.token_type")
    merges = r.fields.get("tokenizer.ggml.merges")
    tokens = _strings(r.fields["tokenizer.ggml.tokens"])

    def special(key, spm_default, bpe_default):  # llama.cpp's defaults when a key is absent
        default = spm_default if kind == SPM else bpe_default
        return _scalar(r, f"tokenizer.ggml.{key}", default if default < len(tokens) else -1)
    return Vocab(
        kind=kind, pre=pre, tokens=tokens,
        scores=np.array([scores.parts[i][0] for i in scores.data], np.float32) if scores else None,
        types=np.array([types.parts[i][0] for i in types.data], np.int32) if types else None,
        merges=_strings(merges) if merges else [],
        bos=special("bos_token_id", 1, 11), eos=special("eos_token_id", 2, 11), unk=special("unknown_token_id", 0, -1),
        pad=_scalar(r, "tokenizer.ggml.padding_token_id", -1),
        add_bos=bool(_scalar(r, "tokenizer.ggml.add_bos_token", kind == SPM or pre_name in ("llama-bpe", "llama3"))),
        add_eos=bool(_scalar(r, "tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(_scalar(r, "tokenizer.ggml.add_space_prefix", kind == SPM)))


def vocab_from_sentencepiece(model_file) -> Vocab:
    """Pieces, scores and types through sentencepiece's own API, as a GGUF converter would write them."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    n = sp.GetPieceSize()
    types = []
    for i in range(n):
        types.append(TYPE_UNKNOWN if sp.IsUnknown(i) else TYPE_CONTROL if sp.IsControl(i) else
                     TYPE_UNUSED if sp.IsUnused(i) else TYPE_BYTE if sp.IsByte(i) else TYPE_NORMAL)
    return Vocab(kind=SPM, tokens=[sp.IdToPiece(i).encode() for i in range(n)],
                 scores=np.array([sp.GetScore(i) for i in range(n)], np.float32), types=np.array(types, np.int32),
                 bos=sp.bos_id(), eos=sp.eos_id(), unk=sp.unk_id(), pad=sp.pad_id(), add_bos=True,
                 add_space_prefix=True)


def gguf_with_pre(src: Path, pre: str) -> Path:
    """A copy of a vocabulary-only GGUF with another tokenizer.ggml.pre (cached), so that the peer
    tokenizes with that pre-tokenizer too."""
    import gguf
    dst = _cache_dir() / "tok-vocab" / f"{Path(src).stem}-{pre}.gguf"
    if dst.exists():
        return dst
    r = gguf.GGUFReader(str(src))
    arch = bytes(r.fields["general.architecture"].parts[r.fields["general.architecture"].data[0]]).decode()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(f".{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else f.contents()
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(dst)
    return dst


class TokError(Exception):
    def __init__(self, code: int):
        super().__init__(f"tokenizer error {code}")
        self.code = code


class Lib:
    def __init__(self, sanitize: bool = False):
        self.lib = L = C.CDLL(str(build(sanitize)))
        P = C.c_void_p
        L.tokenizer_new.argtypes = [C.POINTER(Desc), C.c_char_p, C.c_size_t]
        L.tokenizer_new.restype = P
        L.tokenizer_free.argtypes = [P]
        L.tokenizer_encode.argtypes = [P, C.c_char_p, C.c_size_t, C.c_int, C.c_int, C.POINTER(C.c_int32), C.c_int32]
        L.tokenizer_encode.restype = C.c_int32
        L.tokenizer_piece.argtypes = [P, C.c_int32, C.c_char_p, C.c_int32, C.c_int]
        L.tokenizer_piece.restype = C.c_int32
        L.tokenizer_utf8_incomplete.argtypes = [C.c_char_p, C.c_size_t]
        L.tokenizer_utf8_incomplete.restype = C.c_size_t
        L.tokenizer_is_eog.argtypes = [P, C.c_int32]
        L.tokenizer_adds_bos.argtypes = [P]
        L.tokenizer_n_tokens.argtypes = [P]
        L.tokenizer_n_tokens.restype = C.c_uint32

    def tokenizer(self, v: Vocab) -> "Tokenizer":
        return Tokenizer(self, v)

    def utf8_incomplete(self, buf: bytes) -> int:
        return self.lib.tokenizer_utf8_incomplete(buf, len(buf))


def _str_array(items: list[bytes]):
    """One buffer holding all strings, and the tok_str array pointing into it."""
    blob = C.create_string_buffer(b"".join(items) or b"\0")
    arr = (TokStr * max(1, len(items)))()
    base, off = C.addressof(blob), 0
    for i, s in enumerate(items):
        arr[i].ptr, arr[i].len = base + off, len(s)
        off += len(s)
    return blob, arr


class Tokenizer:
    def __init__(self, lib: Lib, v: Vocab):
        self.L = lib.lib
        tok_blob, toks = _str_array(v.tokens)
        merge_blob, merges = _str_array(v.merges)
        scores = None if v.scores is None else np.ascontiguousarray(v.scores, np.float32)
        types = None if v.types is None else np.ascontiguousarray(v.types, np.int32)
        d = Desc(kind=v.kind, pre=v.pre, n_tokens=len(v.tokens), tokens=toks,
                 scores=scores.ctypes.data_as(C.POINTER(C.c_float)) if scores is not None else None,
                 types=types.ctypes.data_as(C.POINTER(C.c_int32)) if types is not None else None,
                 n_merges=len(v.merges), merges=merges, bos_id=v.bos, eos_id=v.eos, unk_id=v.unk, pad_id=v.pad,
                 add_bos=v.add_bos, add_eos=v.add_eos, add_space_prefix=v.add_space_prefix)
        err = C.create_string_buffer(256)
        self.t = self.L.tokenizer_new(C.byref(d), err, 256)
        del tok_blob, merge_blob  # the tokenizer keeps its own copies
        if not self.t:
            raise ValueError(err.value.decode())

    def __del__(self):
        if getattr(self, "t", None):
            self.L.tokenizer_free(self.t)
            self.t = None

    def encode(self, text: bytes | str, add_special: bool = False, parse_special: bool = False,
               max_tokens: int | None = None) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        cap = 3 * len(data) + 8 if max_tokens is None else max_tokens
        out = (C.c_int32 * max(cap, 1))()
        n = self.L.tokenizer_encode(self.t, data, len(data), add_special, parse_special, out, cap)
        if n <= ERR_ID:
            raise TokError(n)
        if n < 0:
            raise OverflowError(-n)
        return list(out[:n])

    def piece(self, tid: int, special: bool = False) -> bytes:
        buf = C.create_string_buffer(64)
        n = self.L.tokenizer_piece(self.t, tid, buf, 64, special)
        if n <= ERR_ID:
            raise TokError(n)
        if n < 0:
            buf = C.create_string_buffer(-n)
            n = self.L.tokenizer_piece(self.t, tid, buf, -n, special)
        return buf.raw[:n]

    def decode(self, ids, special: bool = False) -> bytes:
        return b"".join(self.piece(i, special) for i in ids)

    def is_eog(self, tid: int) -> bool:
        return bool(self.L.tokenizer_is_eog(self.t, tid))


def read_vocab_tests(gguf_path: Path) -> list[tuple[bytes, list[int]]]:
    """The .inp/.out pairs next to a ggml-vocab-*.gguf, split as llama.cpp's test-tokenizer-0 does."""
    raw = Path(str(gguf_path) + ".inp").read_bytes()
    outs = Path(str(gguf_path) + ".out").read_text().splitlines()
    sep = b"\n__ggml_vocab_test__\n"
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(sep)
    assert len(inputs) == len(outs), (len(inputs), len(outs))
    return [(i, [int(x) for x in o.split()]) for i, o in zip(inputs, outs)]


def build_fuzz_driver(sanitize: bool = True) -> Path:
    """Compiles tests/tok_fuzz.c with the tokenizer, by default under ASan + UBSan (leaks reported too)."""
    flags = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{SRC}"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    driver = Path(__file__).with_name("tok_fuzz.c")
    h = hashlib.sha256(" ".join(flags).encode() + driver.read_bytes())
    for name in SOURCES + HEADERS:
        h.update((SRC / name).read_bytes())
    cache = _cache_dir() / "clib"
    cache.mkdir(parents=True, exist_ok=True)
    exe = cache / f"tok_fuzz-{h.hexdigest()[:16]}"
    if not exe.exists():
        tmp = exe.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["cc", *flags, str(driver), *[str(SRC / s) for s in SOURCES], "-o", str(tmp)], check=True)
        tmp.replace(exe)
    return exe


def dump_vocab(v: Vocab, path: Path) -> None:
    """Writes v in the format tok_fuzz.c reads."""
    u32 = lambda *xs: np.array(xs, np.uint32).tobytes()  # noqa: E731
    i32 = lambda *xs: np.array(xs, np.int32).tobytes()  # noqa: E731
    out = [u32(v.kind, v.pre, len(v.tokens), len(v.merges)), i32(v.bos, v.eos, v.unk, v.pad),
           u32(v.add_bos, v.add_eos, v.add_space_prefix, v.scores is not None, v.types is not None)]
    out += [u32(len(s)) + s for s in v.tokens]
    if v.scores is not None:
        out.append(np.asarray(v.scores, np.float32).tobytes())
    if v.types is not None:
        out.append(np.asarray(v.types, np.int32).tobytes())
    out += [u32(len(s)) + s for s in v.merges]
    path.write_bytes(b"".join(out))


def dump_inputs(inputs: list[tuple[bytes, int]], path: Path) -> None:
    """Records for tok_fuzz.c: (text, flags) with flags bit 0 add_special, bit 1 parse_special."""
    path.write_bytes(b"".join(np.uint32(len(s)).tobytes() + bytes([f]) + s for s, f in inputs))


def run_fuzz_driver(exe: Path, v: Vocab, inputs: list[tuple[bytes, int]], workdir: Path):
    vf, inf = workdir / "vocab.bin", workdir / "inputs.bin"
    dump_vocab(v, vf)
    dump_inputs(inputs, inf)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.run([str(exe), str(vf), str(inf)], capture_output=True, text=True, env=env, timeout=300)
