"""Scripts that fetch and prepare the models the demo, tests and benchmarks use."""
import os
from pathlib import Path

# The project's shared data (eval text, tokenizer test vectors) lies beside the checkout.
SHARED_DATA = Path(os.environ.get("PVQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EVAL_TEXT = SHARED_DATA / "eval" / "debian-reference.txt"

# A held-out text of another kind than the prose the calibration reads: Python source code, the standard
# library's argparse, dataclasses and enum modules of the Python that runs us (3.11 here: about 70 k tokens).
CODE_MODULES = ("argparse", "dataclasses", "enum")


def code_text() -> str:
    import importlib
    return "\n".join(Path(importlib.import_module(name).__file__).read_text(encoding="utf-8") for name in CODE_MODULES)


def write_f16_gguf(src: Path, out: Path) -> None:
    """A model's reference: the GGUF file `src` with every tensor dequantized (F16; 1-D tensors F32), its
    metadata kept."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    from pvq_convert.gguf_out import atomic_output, copy_fields

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    with atomic_output(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        copy_fields(reader, writer, skip={"general.architecture", "general.file_type"})
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

        def out_dtype(t):           # 1-D tensors (norms, biases) stay F32
            return np.dtype(np.float32 if len(t.shape) == 1 else np.float16)

        for t in reader.tensors:    # a tensor's bytes are read when the writer reaches it
            shape = tuple(int(n) for n in reversed(t.shape))
            writer.add_tensor_info(t.name, shape, out_dtype(t), int(np.prod(shape)) * out_dtype(t).itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(dequantize(t.data, t.tensor_type).astype(out_dtype(t)))
        writer.close()


def write_hf_dir(src: Path, out: Path, dtype) -> None:
    """A Hugging Face directory made from the GGUF file `src` (pvq_convert.gguf_in): model.safetensors in `dtype`
    (HF's row layout), config.json, tokenizer.json, tokenizer_config.json with the chat template."""
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    from pvq_convert.gguf_in import write_json
    from pvq_convert.gguf_out import atomic_output
    from pvq_convert.hf_model import open_model

    m = open_model(src)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(m.load(name).astype(dtype)) for name in m.tensors}
    with atomic_output(out / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    del tensors
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(m.dir / name, out / name)
    write_json(out / "config.json", m.config | {"torch_dtype": np.dtype(dtype).name})
