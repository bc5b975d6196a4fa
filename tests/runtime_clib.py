"""The runtime (runtime/build or, with PVQ_RUNTIME_BUILD=build-asan, the sanitizer build) for tests:
libpvq through cffi over include/pvq.h, the pvqrun binary, the Q8_0 SmolLM2 file made by llama.cpp's
quantizer, and the peer's logits cached in $PVQ_CACHE."""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
CACHE = Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq"))
BUILD = os.environ.get("PVQ_RUNTIME_BUILD", "build")


def build_dir(variant: str = BUILD) -> Path:
    """Runs make for the variant (build or build-asan) and returns its directory."""
    target = "asan" if variant == "build-asan" else "all"
    subprocess.run(["make", "-s", "-C", str(RUNTIME), target], check=True)
    return RUNTIME / variant


def sanitizer_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=99")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=99")
    return env


def run_pvqrun(args, variant: str = BUILD, timeout: float = 300, input_bytes: bytes | None = None):
    exe = build_dir(variant) / "pvqrun"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, timeout=timeout, env=sanitizer_env(),
                          input=input_bytes)


def header_cdef(path: Path) -> str:
    """A header as cffi's cdef reads it: no comments, preprocessor lines, C++ guard or export macro."""
    header = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    header = re.sub(r"\bPVQ_API\b", "", header)
    return "\n".join(l for l in header.splitlines() if not l.startswith("#") and "extern \"C\"" not in l
                     and l.strip() != "}")


def _header_cdef() -> str:
    return header_cdef(RUNTIME / "include" / "pvq.h")


_FFI = None


def lib(variant: str = "build"):
    """(ffi, lib) for libpvq, which exports the public API only. In-process use needs the plain build (ASan
    must be loaded first)."""
    global _FFI
    from cffi import FFI
    if _FFI is None:
        ffi = FFI()
        ffi.cdef(_header_cdef())
        _FFI = (ffi, ffi.dlopen(str(build_dir(variant) / "libpvq.so")))
    return _FFI


_INTERNAL = None
_DECLARED: set[str] = set()


def lib_with(cdef: str):
    """(ffi, lib) for libpvq_internal.so, the same code with every symbol exported, with the internal
    declarations cdef added (once per text) to kernels/isa.h's and the traits table's: tests reach kernels pvq.h
    keeps private. A library instance of
    its own: its kernel set is chosen apart from lib()'s."""
    global _INTERNAL
    from cffi import FFI
    if _INTERNAL is None:
        ffi = FFI()
        ffi.cdef(_header_cdef() + ISA_CDEF + TRAITS_CDEF)
        _INTERNAL = (ffi, ffi.dlopen(str(build_dir() / "libpvq_internal.so")))
    ffi, L = _INTERNAL
    if cdef not in _DECLARED:
        ffi.cdef(cdef)
        _DECLARED.add(cdef)
    return ffi, L


ISA_CDEF = header_cdef(RUNTIME / "src" / "kernels" / "isa.h")
# types.h's traits table and per-set kernel rows, for the kernel tests
TRAITS_CDEF = """
typedef void (*dot_fn)(int64_t n, const void *w, const void *x, float *out);
typedef void (*tile_fn)(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                        size_t out_stride);
typedef struct {
    uint32_t id; const char *name; int64_t block; size_t block_bytes; uint32_t vec_type;
    void (*to_float[3])(const void *src, float *dst, int64_t n);
    void (*from_float[3])(const float *src, void *dst, int64_t n);
    dot_fn dot[3]; dot_fn dot_batch[3]; tile_fn tile[3];
    void *xq_bytes, *quantize_x, *rows; int64_t batch_rows; void *scratch_bytes, *get_row; /* the matrix side */
} type_traits;
const type_traits *type_get(uint32_t id);
size_t type_row_bytes(uint32_t id, int64_t n);
typedef struct { int lanes; void (*reduce)(float *lanes, int n, float *out); } lane_order;
typedef struct { lane_order f16_single, f16_batch; double (*softmax_sum)(const float *v, int64_t n); } sum_orders;
typedef struct {
    const sum_orders *sums;
    void (*exp)(int64_t n, float *y, const float *x);
    void (*swiglu)(int64_t n, float *y, const float *gate, const float *up);
    void (*lane_sums_f16)(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                          float *out);
    tile_fn tile_f32;
    void (*pvq_quantize_x_q8)(const float *x, int64_t n, int8_t *xq, float *xs);
    void (*hadamard)(const void *pl, float *x);
} isa_kernels;
const isa_kernels *isa_kernels_of(isa_id isa);
"""
ISA_NAMES = ("scalar", "avx2", "avx512")


def cpu_isas() -> list[str]:
    """The kernel sets this CPU runs, as the library detects them (every test of a kernel runs on each)."""
    ffi, L = lib_with("")
    return [name for i, name in enumerate(ISA_NAMES) if L.isa_cpu_supports(i)]


def isa_index(name: str) -> int:
    return ISA_NAMES.index(name)


@contextlib.contextmanager
def kernel_set(name: str, internal: bool = False):
    """The kernel set `name` active for the block in libpvq (or in libpvq_internal.so), then the best again."""
    ffi, L = lib_with("") if internal else lib()
    select = L.isa_select if internal else L.pvq_set_isa
    err = ffi.new("char[256]")
    assert select(name.encode(), err, 256) == 0, ffi.string(err)
    try:
        yield name
    finally:
        assert select(b"auto", err, 256) == 0


class Model:
    """A loaded model and one context, through the C API."""

    def __init__(self, path, n_ctx=512, n_threads=2, logits_all=True, pvq_repack=False, pvq_f32_act=False):
        ffi, L = self.ffi, self.L = lib()
        self.err = ffi.new("char[512]")
        pm = ffi.new("pvq_model **")
        mp = L.pvq_model_default_params()
        mp.pvq_repack, mp.pvq_f32_activations = int(pvq_repack), int(pvq_f32_act)
        self._check(L.pvq_model_load_params(str(path).encode(), ffi.new("pvq_model_params *", mp), pm, self.err, 512))
        self.m = pm[0]
        p = L.pvq_context_default_params()
        p.n_ctx, p.n_batch, p.n_threads, p.logits_all = n_ctx, n_ctx, n_threads, int(logits_all)
        pc = ffi.new("pvq_context **")
        self._check(L.pvq_context_new(self.m, ffi.new("pvq_context_params *", p), pc, self.err, 512))
        self.c = pc[0]
        self.n_vocab = L.pvq_n_vocab(self.m)
        # the context's worker threads must be joined before cffi unloads the library at exit
        atexit.register(self.close)

    def _check(self, st):
        if st != 0:
            raise RuntimeError(self.ffi.string(self.err).decode())

    def tokenize(self, text: str, add_special=True) -> list[int]:
        b = text.encode()
        out = self.ffi.new("int32_t[]", len(b) + 16)
        n = self.ffi.new("int32_t *")
        self._check(self.L.pvq_tokenize(self.m, b, len(b), add_special, 1, out, len(b) + 16, n, self.err, 512))
        return list(out[0:n[0]])

    def eval(self, tokens) -> np.ndarray:
        """Appends tokens; returns the logits the context kept ([n, n_vocab] or [1, n_vocab])."""
        arr = self.ffi.new("int32_t[]", list(tokens))
        self._check(self.L.pvq_eval(self.c, arr, len(tokens), self.err, 512))
        rows = []
        i = 0
        while (p := self.L.pvq_logits(self.c, i)) != self.ffi.NULL:
            rows.append(np.frombuffer(self.ffi.buffer(p, 4 * self.n_vocab), dtype=np.float32).copy())
            i += 1
        return np.stack(rows)

    def reset(self):
        self.L.pvq_kv_truncate(self.c, 0)

    def greedy(self, prompt_ids, n) -> list[int]:
        self.reset()
        logits = self.eval(prompt_ids)[-1]
        out = []
        for _ in range(n):
            t = int(np.argmax(logits))
            out.append(t)
            logits = self.eval([t])[-1]
        return out

    def close(self):
        if self.c is not None:
            self.L.pvq_context_free(self.c)
            self.L.pvq_model_free(self.m)
            self.c = self.m = None
            atexit.unregister(self.close)


def q8_0_gguf(f16_path: Path) -> Path:
    """The F16 SmolLM2 quantized to Q8_0 by llama.cpp (llama_model_quantize), made once."""
    out = CACHE / "smollm2-135m-instruct" / "q8_0.gguf"
    if not out.exists():
        import llama_cpp
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.nthread = 2
        tmp = out.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params)
        assert rc == 0, f"llama_model_quantize failed ({rc})"
        tmp.replace(out)
    return out


def file_key(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).name}-{st.st_size}-{int(st.st_mtime)}"


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode map: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_gguf(path: Path, arch: str = "llama", wtype: str = "f16", seed: int = 0, dim: int = 64, n_layer: int = 2,
              n_head: int = 4, n_head_kv: int = 2, ffn: int = 128) -> Path:
    """A small random-weight model with a byte-level BPE vocabulary, written with the gguf package."""
    import gguf
    from gguf.quants import quantize
    rng = np.random.default_rng(seed)
    tokens = _byte_chars() + ["Ġt", "he", "<|endoftext|>"]
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // n_head)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (n_vocab - 1) + [3])
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(n_vocab - 1)
    w.add_eos_token_id(n_vocab - 1)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[wtype]

    def mat(name, n_out, n_in):
        a = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        if wtype == "f32":
            w.add_tensor(name, a)
        elif wtype == "f16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    def vec(name, n, center=1.0):
        w.add_tensor(name, (center + 0.1 * rng.standard_normal(n)).astype(np.float32))

    kv_dim = dim // n_head * n_head_kv
    mat("token_embd.weight", n_vocab, dim)
    vec("output_norm.weight", dim)
    for l in range(n_layer):
        p = f"blk.{l}."
        vec(p + "attn_norm.weight", dim)
        vec(p + "ffn_norm.weight", dim)
        mat(p + "attn_q.weight", dim, dim)
        mat(p + "attn_k.weight", kv_dim, dim)
        mat(p + "attn_v.weight", kv_dim, dim)
        mat(p + "attn_output.weight", dim, dim)
        mat(p + "ffn_gate.weight", ffn, dim)
        mat(p + "ffn_up.weight", ffn, dim)
        mat(p + "ffn_down.weight", dim, ffn)
        if arch == "qwen2":
            vec(p + "attn_q.bias", dim, 0.0)
            vec(p + "attn_k.bias", kv_dim, 0.0)
            vec(p + "attn_v.bias", kv_dim, 0.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_layout(data: bytes) -> dict:
    """Byte offsets of a GGUF file's fields: for each key and tensor info its start and the positions of
    its length/count/dims/type/offset fields; the data section start and each tensor's data start."""
    import struct
    pos = 24
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    kvs, tinfos = [], []

    def skip_value(p, t):
        if t == 8:
            return p + 8 + struct.unpack_from("<Q", data, p)[0]
        return p + scalar[t]

    alignment = 32
    for _ in range(n_kv):
        kv = {"start": pos, "key_len": pos}
        klen = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8:pos + 8 + klen].decode()
        pos += 8 + klen
        kv["type"] = pos
        t = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        kv["value"] = pos
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, pos)
            kv["count"] = pos + 4
            pos += 12
            kv["first"] = pos
            for _ in range(n):
                pos = skip_value(pos, et)
        else:
            if key == "general.alignment":
                alignment = struct.unpack_from("<I", data, pos)[0]
            pos = skip_value(pos, t)
        kv["key"] = key
        kvs.append(kv)
    for _ in range(n_tensors):
        ti = {"start": pos}
        nlen = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + nlen
        ti["n_dims"] = pos
        nd = struct.unpack_from("<I", data, pos)[0]
        ti["dims"] = pos + 4
        pos += 4 + 8 * nd
        ti["type"] = pos
        ti["offset"] = pos + 4
        ti["rel_offset"] = struct.unpack_from("<Q", data, pos + 4)[0]
        pos += 12
        tinfos.append(ti)
    data_start = (pos + alignment - 1) // alignment * alignment
    return {"kv": kvs, "tensors": tinfos, "header_end": pos, "data_start": data_start,
            "tensor_data": [data_start + t["rel_offset"] for t in tinfos]}
