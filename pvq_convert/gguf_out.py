"""Writing GGUF: tensor encodings for the unquantized output types, streaming, atomic output."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import gguf
import numpy as np
from gguf.quants import quantize

from . import ConvertError

OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def tensor_type(outtype: str, shape: Sequence[int]) -> gguf.GGMLQuantizationType:
    """The GGML type a tensor of this (HF row-major) shape gets, as llama.cpp's converter chooses:
    1-D tensors (norms, biases) stay F32; Q8_0 needs rows that are whole blocks, else F16."""
    qtype = OUTTYPES[outtype][0]
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


def encode(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 array -> the bytes (as a numpy array) that GGUF stores for qtype."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(w, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(w, dtype=np.float16)
    return quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)


def encoded_nbytes(shape: Sequence[int], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def copy_fields(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, skip: set[str]) -> None:
    """Copy every metadata key of reader into writer, with its exact value type."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    SIGTERM is turned into an exception for the duration so that a kill also removes the temporary
    file; the user's existing `path`, if any, is never touched until the final rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConvertError(f"output directory {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise ConvertError(f"cannot write to {path.parent}: {e.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated")

    old = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def write_streaming(path: Path, writer: gguf.GGUFWriter,
                    tensors: Sequence[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType,
                                            Callable[[], np.ndarray]]],
                    progress: Callable[[str], None] = lambda name: None) -> None:
    """Write metadata already added to `writer`, then each tensor, producing one at a time.

    `tensors` holds (name, shape (rows first), GGML type, produce) where produce() returns the
    tensor's bytes as GGUF stores them (see `encoded`)."""
    for name, shape, qtype, _ in tensors:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), encoded_nbytes(shape, qtype), qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape, qtype, produce in tensors:
        writer.write_tensor_data(produce().view(np.uint8).reshape(-1))
        progress(name)
    writer.close()


def encoded(load: Callable[[], np.ndarray], qtype: gguf.GGMLQuantizationType) -> Callable[[], np.ndarray]:
    """A producer for write_streaming: load() gives float32 data, encoded to qtype when called."""
    return lambda: encode(load(), qtype)
