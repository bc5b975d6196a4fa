"""The tokenizer as GGUF metadata: SentencePiece (`llama`) from tokenizer.model, byte-level BPE (`gpt2`)
from tokenizer.json; special tokens, add_bos/add_eos and the chat template from tokenizer_config.json."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from . import ConvertError

T = gguf.TokenType

# The split regexes of the pre-tokenizers llama.cpp knows by name (as tokenizer.json spells them).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = ("gpt-2", "llama-bpe", "smollm", "qwen2")


@dataclass
class Vocab:
    model: str                       # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad -> id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges:
            w.add_token_merges(self.merges)
        for kind, tid in self.special.items():
            getattr(w, f"add_{kind}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def load_vocab(model_dir: Path, n_vocab: int, pre_override: str | None = None) -> Vocab:
    tok_config = _json(model_dir / "tokenizer_config.json") or {}
    if (model_dir / "tokenizer.model").is_file():
        vocab = _sentencepiece(model_dir / "tokenizer.model", n_vocab, tok_config)
    elif (model_dir / "tokenizer.json").is_file():
        vocab = _bpe(model_dir / "tokenizer.json", n_vocab, tok_config, pre_override)
    else:
        raise ConvertError(f"no tokenizer.model or tokenizer.json in {model_dir}")
    vocab.chat_template = _chat_template(model_dir, tok_config)
    return vocab


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot parse {path}: {e}") from None


def _pad(tokens: list[str | None], types: list[int], n_vocab: int, source: str) -> None:
    """Fill holes and pad to the embedding's row count, as llama.cpp does; refuse a larger tokenizer."""
    if len(tokens) > n_vocab:
        raise ConvertError(f"{source} has {len(tokens)} tokens but the model's vocab_size is {n_vocab}")
    for i in range(len(tokens), n_vocab):
        tokens.append(None)
        types.append(T.UNUSED)
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], types[i] = f"[PAD{i}]", T.UNUSED


def _sentencepiece(path: Path, n_vocab: int, tok_config: dict) -> Vocab:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"cannot load {path}: {e}") from None
    tokens, types, scores = [], [], []
    for i in range(sp.GetPieceSize()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        types.append(T.UNKNOWN if sp.IsUnknown(i) else T.CONTROL if sp.IsControl(i)
                     else T.UNUSED if sp.IsUnused(i) else T.BYTE if sp.IsByte(i) else T.NORMAL)
    _pad(tokens, types, n_vocab, path.name)
    scores += [-1000.0] * (len(tokens) - len(scores))
    special = {k: v for k, v in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                  ("pad", sp.pad_id())) if v >= 0}
    # Whether the model prepends "▁": encode one letter and look (no protobuf needed).
    add_space_prefix = sp.EncodeAsPieces("a")[0].startswith("\u2581")
    return Vocab("llama", "default", tokens, types, scores=scores, special=special,
                 add_bos=tok_config.get("add_bos_token", True), add_eos=tok_config.get("add_eos_token", False),
                 add_space_prefix=add_space_prefix)


def _bpe(path: Path, n_vocab: int, tok_config: dict, pre_override: str | None) -> Vocab:
    tj = _json(path)
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"{path.name}: only BPE tokenizer.json files are supported, got {model.get('type')!r}")
    pre = pre_override or detect_pre_tokenizer(tj)
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(f"unknown pre-tokenizer {pre!r}; known: {', '.join(PRE_TOKENIZERS)}")

    entries = dict((tid, (tok, T.NORMAL)) for tok, tid in model["vocab"].items())
    for added in tj.get("added_tokens", []):
        entries[added["id"]] = (added["content"], T.CONTROL if added.get("special") else T.USER_DEFINED)
    size = max(entries) + 1
    tokens: list[str | None] = [None] * size
    types = [T.UNUSED] * size
    for tid, (tok, typ) in entries.items():
        tokens[tid], types[tid] = tok, typ
    _pad(tokens, types, n_vocab, path.name)

    ids = {tok: i for i, tok in enumerate(tokens)}
    special = {}
    for kind, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token")):
        tok = tok_config.get(key)
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok is not None:
            if tok not in ids:
                raise ConvertError(f"tokenizer_config.json: {key} {tok!r} is not in the vocabulary")
            special[kind] = ids[tok]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab("gpt2", pre, tokens, types, merges=merges, special=special,
                 add_bos=tok_config.get("add_bos_token", False), add_eos=tok_config.get("add_eos_token", False))


def detect_pre_tokenizer(tj: dict) -> str:
    """Name the pre-tokenizer from tokenizer.json's structure (llama.cpp's names)."""
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == QWEN2_SPLIT:
            return "qwen2"
    raise ConvertError("cannot tell which pre-tokenizer tokenizer.json uses; name it with --vocab-pre "
                       f"({', '.join(PRE_TOKENIZERS)})")


def _chat_template(model_dir: Path, tok_config: dict) -> str | None:
    tpl = tok_config.get("chat_template")
    if isinstance(tpl, list):  # [{"name": ..., "template": ...}]
        tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
    if tpl is None and (model_dir / "chat_template.jinja").is_file():
        tpl = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return tpl
