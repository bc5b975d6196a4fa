"""pvq_convert: Hugging Face checkpoints -> GGUF, unquantized or with Pyramid Vector Quantization."""


class ConvertError(Exception):
    """A problem with the user's input or output path; the CLI prints it as one line and exits 1."""
