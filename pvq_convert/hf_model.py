"""Opening a Hugging Face checkpoint: find its files, check them, stream its tensors one at a time (a GGUF file\nopens as one too: gguf_in.py)."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ConvertError
from .arch import Arch, arch_from_config

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                           "U8": 1, "BOOL": 1}


@dataclass
class TensorRef:
    file: Path
    dtype: str
    shape: tuple[int, ...]

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (bf16 goes through torch, which numpy cannot read)."""
        from safetensors import safe_open

        with safe_open(self.file, framework="pt") as f:
            return f.get_tensor(name).float().numpy()


@dataclass
class HFModel:
    dir: Path
    config: dict
    arch: Arch
    tensors: dict  # HF name -> where it lives (TensorRef, gguf_in.GGUFTensorRef), in checkpoint order
    scratch: object = field(default=None, repr=False)  # what keeps `dir` alive when it is made (GGUF input)
    source: Path | None = None     # the GGUF file read as this checkpoint (gguf_in.py); None: `dir` itself

    @property
    def name(self) -> str:
        """What the user calls the model: its directory's name, or the GGUF file's stem."""
        return self.source.stem if self.source else self.dir.name

    def load(self, name: str) -> np.ndarray:
        """One tensor as float32."""
        return self.tensors[name].read(name)

    def hparam(self, key: str, default=None):
        if key in self.config:
            return self.config[key]
        if default is None:
            raise ConvertError(f"config.json lacks {key!r}")
        return default


def open_model(path: str | Path) -> HFModel:
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if path.is_dir():
        model_dir = path
        index = path / "model.safetensors.index.json"
        files = _index_files(index) if index.is_file() else sorted(path.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"no .safetensors files in {path}")
    elif path.name.endswith(".safetensors.index.json"):
        model_dir, files = path.parent, _index_files(path)
    elif path.suffix == ".safetensors":
        model_dir, files = path.parent, [path]
    elif path.suffix == ".gguf":
        from .gguf_in import open_gguf
        return open_gguf(path)
    else:
        raise ConvertError(f"{path}: expected a model directory, a .safetensors or .gguf file or an index.json")

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"no config.json in {model_dir} (it must lie beside the weights)")
    config = _read_json(config_path)
    arch = arch_from_config(config)

    tensors: dict[str, TensorRef] = {}
    for f in files:
        for name, ref in _read_header(f).items():
            if name in tensors:
                raise ConvertError(f"tensor {name} appears in both {tensors[name].file.name} and {f.name}")
            tensors[name] = ref
    return HFModel(model_dir, config, arch, tensors)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read {path}: {e}") from None


def _index_files(index: Path) -> list[Path]:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError(f"{index} has no weight_map")
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    for f in files:
        if not f.is_file():
            raise ConvertError(f"shard {f.name} named in {index.name} is missing")
    return files


def _read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and check a safetensors header: every tensor's bytes must lie inside the file.

    Checked here, before any output is written, so that a truncated download fails at once."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path.name} is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ConvertError(f"{path.name} is truncated: header of {n} bytes, file of {size}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConvertError(f"{path.name} has a corrupt safetensors header") from None
    data_size = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            nbytes = int(np.prod(shape, dtype=np.int64)) * SAFETENSORS_DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path.name}: bad header entry for {name}") from None
        if end > data_size:
            raise ConvertError(f"{path.name} is truncated: {name} ends at byte {end} of {data_size}")
        if end - begin != nbytes:
            raise ConvertError(f"{path.name}: {name} has {end - begin} bytes for shape {shape} {dtype}")
        out[name] = TensorRef(path, dtype, shape)
    return out
