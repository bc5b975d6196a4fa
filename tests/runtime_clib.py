"""The runtime (runtime/build or, with PVQ_RUNTIME_BUILD=build-asan, the sanitizer build) for tests:
libpvq through cffi over include/pvq.h, the pvqrun binary, the Q8_0 SmolLM2 file made by llama.cpp's
quantizer, and the peer's logits cached in $PVQ_CACHE."""
from __future__ import annotations

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


_FFI = None


def lib(variant: str = "build"):
    """(ffi, lib) for libpvq. In-process use needs the plain build (ASan must be loaded first)."""
    global _FFI
    from cffi import FFI
    if _FFI is None:
        header = (RUNTIME / "include" / "pvq.h").read_text()
        header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
        header = "\n".join(l for l in header.splitlines() if not l.startswith("#") and "extern \"C\"" not in l
                           and l.strip() != "}")
        ffi = FFI()
        ffi.cdef(header)
        _FFI = (ffi, ffi.dlopen(str(build_dir(variant) / "libpvq.so")))
    return _FFI


class Model:
    """A loaded model and one context, through the C API."""

    def __init__(self, path, n_ctx=512, n_threads=2, logits_all=True):
        ffi, L = self.ffi, self.L = lib()
        self.err = ffi.new("char[512]")
        pm = ffi.new("pvq_model **")
        self._check(L.pvq_model_load(str(path).encode(), pm, self.err, 512))
        self.m = pm[0]
        p = L.pvq_context_default_params()
        p.n_ctx, p.n_batch, p.n_threads, p.logits_all = n_ctx, n_ctx, n_threads, int(logits_all)
        pc = ffi.new("pvq_context **")
        self._check(L.pvq_context_new(self.m, ffi.new("pvq_context_params *", p), pc, self.err, 512))
        self.c = pc[0]
        self.n_vocab = L.pvq_n_vocab(self.m)

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
        self.L.pvq_context_free(self.c)
        self.L.pvq_model_free(self.m)


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
