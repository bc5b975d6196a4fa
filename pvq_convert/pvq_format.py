"""The PVQ tensor type in GGUF: type ids, packing of rows, gguf package registration, writer, reader.

Layout (docs/format.md, "PVQ tensor type"): every group of D weights is one field of W = B + b bits,
B = bit length of N(D, K) - 1, holding (shape index << b) | gain code; a row is its G = n / D fields
packed LSB-first into G * W / 8 bytes (rows are whole blocks, so no padding).  The fp16 row scales live
in a companion F16 tensor "<name>.pvq_scale" of shape [rows]; the 2^b float32 gain levels in the
metadata key "pvq.gain_levels.<name>".

Type id: one id per (D, K, b) layout, id = 0x50000000 | D << 20 | b << 16 | K.  One id per layout
because a GGUF reader sizes a tensor from its type alone (block elements, block bytes): a single id
cannot describe rows whose size depends on D, K and b.  The 0x5 top nibble keeps clear of every
llama.cpp type (< 64), and llama.cpp rejects the id as an invalid type instead of misreading it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from .pvq import Quantized, pyramid_count, valid_index

TYPE_BASE = 0x50000000
MAX_FIELD_BITS = 56          # an index + gain code field; the C decoder reads it with one 64-bit load
MAX_D, MAX_K, MAX_GAIN_BITS = 64, 65535, 8
SCALE_SUFFIX = ".pvq_scale"
LEVELS_KEY = "pvq.gain_levels."
VERSION_KEY, VERSION = "pvq.version", 2   # 2: the enumeration of docs/format.md (1: the plain halves, no longer read)


@dataclass(frozen=True)
class Layout:
    D: int
    K: int
    gain_bits: int

    @property
    def index_bits(self) -> int:
        return (pyramid_count(self.D, self.K) - 1).bit_length()

    @property
    def field_bits(self) -> int:
        return self.index_bits + self.gain_bits

    @property
    def block_groups(self) -> int:
        """Groups per block: the fewest whose fields fill whole bytes."""
        return 8 // math.gcd(self.field_bits, 8)

    @property
    def block_size(self) -> int:
        return self.block_groups * self.D

    @property
    def type_size(self) -> int:
        return self.block_groups * self.field_bits // 8

    @property
    def type_id(self) -> int:
        return TYPE_BASE | self.D << 20 | self.gain_bits << 16 | self.K

    def row_bytes(self, n: int) -> int:
        if n % self.block_size:
            raise ValueError(f"PVQ D={self.D} K={self.K} b={self.gain_bits}: row length {n} is not a "
                             f"multiple of the block of {self.block_size} weights")
        return n // self.block_size * self.type_size

    def bits_per_weight(self, n: int) -> float:
        """Exact rate of a row of n weights, the fp16 row scale included."""
        return (self.row_bytes(n) * 8 + 16) / n


def layout(D: int, K: int, gain_bits: int) -> Layout:
    """A checked layout; raises ValueError naming the first parameter out of range."""
    if not (2 <= D <= MAX_D):
        raise ValueError(f"PVQ D={D} out of range [2, {MAX_D}]")
    if not (1 <= K <= MAX_K):
        raise ValueError(f"PVQ K={K} out of range [1, {MAX_K}]")
    if not (1 <= gain_bits <= MAX_GAIN_BITS):
        raise ValueError(f"PVQ gain bits {gain_bits} out of range [1, {MAX_GAIN_BITS}]")
    lay = Layout(D, K, gain_bits)
    if lay.field_bits > MAX_FIELD_BITS:
        raise ValueError(f"PVQ D={D} K={K} b={gain_bits}: field of {lay.field_bits} bits exceeds "
                         f"{MAX_FIELD_BITS} (lower K or D)")
    return lay


def layout_of(q: Quantized) -> Layout:
    """The layout of a coded matrix."""
    return layout(q.D, q.K, len(q.levels).bit_length() - 1)


def coded_bits(codes) -> tuple[int, float]:
    """(weights, bits) of coded matrices as the file stores them: fields and fp16 row scales."""
    n = bits = 0
    for q in codes:
        R, G = q.index.shape
        n, bits = n + R * G * q.D, bits + layout_of(q).bits_per_weight(G * q.D) * R * G * q.D
    return n, bits


def layout_of_type(type_id: int) -> Layout:
    if (type_id & 0xF0000000) != TYPE_BASE:
        raise ValueError(f"type id {type_id:#x} is not a PVQ type")
    return layout((type_id >> 20) & 0xFF, type_id & 0xFFFF, (type_id >> 16) & 0xF)


def is_pvq_type(type_id: int) -> bool:
    return (int(type_id) & 0xF0000000) == TYPE_BASE


# ---------------------------------------------------------------- gguf package registration

def register_gguf_types() -> None:
    """Teach the gguf package the PVQ ids, so that GGUFReader and GGUFWriter size PVQ tensors.

    GGMLQuantizationType is an IntEnum; its _missing_ hook (called for values that are not members)
    creates a pseudo-member for any valid PVQ id on first use and records its (block elements, block
    bytes) in GGML_QUANT_SIZES.  Invalid PVQ ids raise ValueError with the reason.  Idempotent.
    """
    cls = gguf.GGMLQuantizationType
    if getattr(cls, "_pvq_registered", False):
        return
    previous = cls._missing_

    def _missing_(klass, value):
        if isinstance(value, (int, np.integer)) and is_pvq_type(int(value)):
            lay = layout_of_type(int(value))          # raises with the reason if absurd
            member = int.__new__(klass, int(value))
            member._name_ = f"PVQ_D{lay.D}_K{lay.K}_B{lay.gain_bits}"
            member._value_ = int(value)
            klass._value2member_map_[int(value)] = member
            gguf.GGML_QUANT_SIZES[member] = (lay.block_size, lay.type_size)
            return member
        return previous.__func__(klass, value)

    cls._missing_ = classmethod(_missing_)
    cls._pvq_registered = True


register_gguf_types()


def gguf_type(lay: Layout) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType(lay.type_id)


# ---------------------------------------------------------------- packing

def pack_rows(index: torch.Tensor, code: torch.Tensor, lay: Layout) -> np.ndarray:
    """Fields (index << b | code) of (R, G) groups -> uint8 rows (R, G * W / 8)."""
    R, G = index.shape
    lay.row_bytes(G * lay.D)
    f = (index.to(torch.int64) << lay.gain_bits) | code.to(torch.int64)
    f = f.cpu().numpy().astype(np.uint64)
    shifts = np.arange(lay.field_bits, dtype=np.uint64)
    out = np.empty((R, G * lay.field_bits // 8), dtype=np.uint8)
    step = max(1, (1 << 24) // max(1, G * lay.field_bits))
    for s in range(0, R, step):
        bits = ((f[s:s + step, :, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out[s:s + step] = np.packbits(bits.reshape(bits.shape[0], -1), axis=1, bitorder="little")
    return out


def unpack_rows(rows: np.ndarray, lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 rows (R, bytes) -> (index (R, G), code (R, G)) int64."""
    rows = np.asarray(rows, dtype=np.uint8)
    R, nb = rows.shape
    W = lay.field_bits
    G = nb * 8 // W
    weights = (np.uint64(1) << np.arange(W, dtype=np.uint64))
    f = np.empty((R, G), dtype=np.uint64)
    step = max(1, (1 << 24) // max(1, nb * 8))
    for s in range(0, R, step):
        bits = np.unpackbits(rows[s:s + step], axis=1, bitorder="little")
        bits = bits[:, :G * W].reshape(-1, G, W).astype(np.uint64)
        f[s:s + step] = (bits * weights).sum(2, dtype=np.uint64)
    f = torch.from_numpy(f.view(np.int64))
    return f >> lay.gain_bits, f & ((1 << lay.gain_bits) - 1)


# ---------------------------------------------------------------- writing and reading GGUF

def pvq_entries(name: str, q: Quantized):
    """What a PVQ matrix adds to a GGUF file, for writers that stream tensors themselves:
    ([(tensor name, numpy data, raw ggml type or None)], {metadata key: float32 list}).
    The packed rows are uint8 (n_out, row_bytes) with raw type PVQ (GGUF shape [n_in, n_out]);
    the scales float16 (n_out,)."""
    lay = layout_of(q)
    if len(q.levels) != 1 << lay.gain_bits:
        raise ValueError("gain level count must be a power of two")
    tensors = [(name, pack_rows(q.index, q.code, lay), gguf_type(lay)),
               (name + SCALE_SUFFIX, q.scale.cpu().numpy().astype(np.float16), None)]
    return tensors, {LEVELS_KEY + name: [float(v) for v in q.levels.cpu().to(torch.float32)]}


def add_pvq_tensor(writer: gguf.GGUFWriter, name: str, q: Quantized) -> None:
    """Add a PVQ-coded matrix to a GGUFWriter: the packed tensor, its row scales, its gain levels,
    and the codec version key (once per file)."""
    tensors, keys = pvq_entries(name, q)
    for tname, data, raw in tensors:
        writer.add_tensor(tname, data, raw_dtype=raw)
    for key, levels in keys.items():
        writer.add_array(key, levels)
    if not any(VERSION_KEY in kv for kv in writer.kv_data):
        writer.add_uint32(VERSION_KEY, VERSION)


@dataclass
class PVQTensor:
    """A PVQ tensor as read back: packed rows (uint8 (R, row_bytes), memory-mapped), scales, levels."""
    name: str
    layout: Layout
    n: int                      # row length (ne0)
    rows: np.ndarray
    scale: np.ndarray           # float16 (R,)
    levels: np.ndarray          # float32 (2^b,)

    def quantized(self) -> Quantized:
        index, code = unpack_rows(self.rows, self.layout)
        return Quantized(index, code, torch.from_numpy(self.scale.copy()), self.layout.D,
                         self.layout.K, torch.from_numpy(self.levels.copy()))


def validate(t: PVQTensor) -> None:
    """Raise ValueError with the reason if any size, index, gain code, scale or level is invalid."""
    lay = t.layout
    R = t.rows.shape[0]
    if t.rows.ndim != 2 or t.rows.shape[1] != lay.row_bytes(t.n):
        raise ValueError(f"{t.name}: rows of {t.rows.shape[-1]} bytes, expected {lay.row_bytes(t.n)}")
    if t.scale.shape != (R,):
        raise ValueError(f"{t.name}: {t.scale.shape} row scales for {R} rows")
    if not np.isfinite(t.scale).all():
        raise ValueError(f"{t.name}: non-finite row scale")
    lv = t.levels
    if lv.shape != (1 << lay.gain_bits,) or not np.isfinite(lv).all() or (lv < 0).any() \
            or (np.diff(lv) <= 0).any():
        raise ValueError(f"{t.name}: gain levels must be {1 << lay.gain_bits} finite, non-negative, "
                         "increasing float32 values")
    index, code = unpack_rows(t.rows, lay)
    bad = ~valid_index(index.reshape(-1), lay.D, lay.K).reshape(index.shape)
    if bool(bad.any()):
        r, g = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{t.name}: row {r} group {g}: shape index {int(index[r, g])} is no point of "
                         f"P({lay.D},{lay.K})")
    # Every code in [0, 2^b) names a level: the field width makes an out-of-range code unrepresentable.


def read_pvq_tensors(path, check: bool = True) -> dict[str, PVQTensor]:
    """Open a GGUF file with gguf.GGUFReader and return its PVQ tensors (validated unless check=False)."""
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as e:
        cause = e.__context__ if e.__context__ is not None else e
        raise ValueError(f"{path}: {cause}") from e
    tensors = {t.name: t for t in reader.tensors}
    if any(is_pvq_type(int(t.tensor_type)) for t in reader.tensors):
        field = reader.fields.get(VERSION_KEY)
        version = int(field.contents()) if field is not None else None
        if version != VERSION:
            raise ValueError(f"{path}: {VERSION_KEY} is {version}, this reader reads {VERSION}" +
                             (": the file was written by an older converter, convert the model again" if version == 1
                              else ""))
    out = {}
    for t in reader.tensors:
        if not is_pvq_type(int(t.tensor_type)):
            continue
        lay = layout_of_type(int(t.tensor_type))
        sc = tensors.get(t.name + SCALE_SUFFIX)
        if sc is None or sc.tensor_type != gguf.GGMLQuantizationType.F16:
            raise ValueError(f"{t.name}: missing F16 row scale tensor {t.name + SCALE_SUFFIX}")
        field = reader.fields.get(LEVELS_KEY + t.name)
        if field is None:
            raise ValueError(f"{t.name}: missing metadata key {LEVELS_KEY + t.name}")
        levels = np.asarray(field.contents(), dtype=np.float32)
        n = int(t.shape[0])
        rows = np.asarray(t.data).reshape(-1, t.data.shape[-1])
        pt = PVQTensor(t.name, lay, n, rows, np.asarray(sc.data).reshape(-1), levels)
        if check:
            validate(pt)
        out[t.name] = pt
    return out
