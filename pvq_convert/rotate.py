"""Coherence processing (QuaRot-style): an orthogonally rotated model with the same outputs whose
weights look i.i.d. Gaussian, so that PVQ's Gaussian assumptions hold. docs/rotation.md has the math
and the convention the runtime follows.

1. Fold every RMSNorm gain g into the linear layers that read the norm's output (W <- W diag(g)); the
   norm weights become 1. The final norm folds into the output layer, which therefore stops being
   the embedding: a tied model comes out untied (lm_head is written as its own tensor), unless
   `tie_head` keeps it tied. Then the final gain stays in front of the head as the dim x dim matrix
   head_mix = Q^T diag(g) Q (a product the runtime runs on the normed state), and the one embedding
   E Q serves both the lookup and the head: half the bytes of two vocabulary matrices.
2. Rotate the residual stream by Q = hadamard.random_hadamard(dim, seed) (applied fast, never formed): with the residual x replaced by Q^T x,
   the embedding rows E <- E Q, every layer reading the residual W <- W Q (q, k, v, gate, up, lm_head),
   every layer writing it W <- Q^T W (o_proj, down_proj). RMSNorm without gain commutes with Q since
   ||Q^T x|| = ||x|| and it subtracts no mean.
3. Rotate the FFN hidden state: the runtime applies the orthonormal Hadamard transform H of
   pvq_convert.hadamard to the input of down_proj, and down_proj W <- W H^T, so W H^T H f = W f.

All arithmetic is float64; the tensors come back in the dtype they came in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .hadamard import hadamard_transform, plan, random_hadamard_left_t, random_hadamard_right
from .torch_model import Model, map_blocks

READS_INPUT_NORM = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
READS_POST_ATTN_NORM = ("mlp.gate_proj", "mlp.up_proj")
WRITES_RESIDUAL = ("self_attn.o_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Rotation:
    """What was done to the model; docs/rotation.md maps these to the GGUF's pvq.rotation.* keys."""
    residual: bool = True       # residual stream rotated by random_hadamard(dim, seed)
    ffn_hadamard: bool = True   # online Hadamard before down_proj
    seed: int = 0

    @property
    def residual_seed(self) -> int | None:
        return self.seed if self.residual else None


def _right(W: torch.Tensor, seed: int | None) -> torch.Tensor:    # W Q
    return W if seed is None else random_hadamard_right(W, seed)


def _left_t(W: torch.Tensor, seed: int | None) -> torch.Tensor:   # Q^T W
    return W if seed is None else random_hadamard_left_t(W, seed)


# Rows of a vocabulary matrix rotated at a time: in float64 a whole 151 936 x 1536 matrix is 1.9 GB per copy.
ROTATE_ROWS = 16384


def _right_rows(W: torch.Tensor, seed: int | None, gain: torch.Tensor | None = None) -> torch.Tensor:
    """W diag(gain) Q (gain: float64, or None) in W's dtype, ROTATE_ROWS rows at a time in float64."""
    out = torch.empty_like(W)
    for r in range(0, len(W), ROTATE_ROWS):
        part = W[r:r + ROTATE_ROWS].to(torch.float64)
        out[r:r + ROTATE_ROWS] = _right(part if gain is None else part * gain, seed).to(W.dtype)
    return out


def rotate_block(w: dict[str, torch.Tensor], seed: int | None, ffn_hadamard: bool) -> dict[str, torch.Tensor]:
    """Fold the two norms of one block and rotate its linear layers (a new dict; w is untouched).
    seed: the residual rotation's (None: no residual rotation)."""
    out = dict(w)

    def f64(key: str) -> torch.Tensor:  # one tensor at a time: a block in float64 would be twice its size
        return w[key].to(torch.float64)

    for norm, readers in (("input_layernorm.weight", READS_INPUT_NORM),
                          ("post_attention_layernorm.weight", READS_POST_ATTN_NORM)):
        for name in readers:
            W = f64(name + ".weight") * f64(norm)
            out[name + ".weight"] = _right(W, seed).to(w[name + ".weight"].dtype)
        out[norm] = torch.ones_like(w[norm])
    for name in WRITES_RESIDUAL:
        W = _left_t(f64(name + ".weight"), seed)
        if ffn_hadamard and name == "mlp.down_proj":
            W = hadamard_transform(W)   # each row w -> H w, i.e. W H^T
        out[name + ".weight"] = W.to(w[name + ".weight"].dtype)
    return out


def rotate_globals(g: dict[str, torch.Tensor], seed: int | None, tie_head: bool = False) -> dict[str, torch.Tensor]:
    """Embedding E Q and norm = 1, and either the final norm folded into a separate (untied) lm_head =
    head diag(g) Q, or, with tie_head on a tied model, head_mix = Q^T diag(g) Q (rounded to fp16, as the
    file stores it) in front of the tied head: logits = (n Q) head_mix (E Q)^T = (n diag(g)) E^T."""
    E = g["embed_tokens.weight"]
    out = {"embed_tokens.weight": _right_rows(E, seed),
           "norm.weight": torch.ones_like(g["norm.weight"])}
    gain = g["norm.weight"].to(torch.float64)
    if tie_head and "lm_head.weight" not in g:
        mix = _left_t(_right(torch.diag(gain), seed), seed)   # Q^T diag(g) Q, symmetric
        out["head_mix.weight"] = mix.half().to(E.dtype)
    else:
        out["lm_head.weight"] = _right_rows(g.get("lm_head.weight", E), seed, gain).to(E.dtype)
    return out


def rotate_model(model: Model, rotation: Rotation = Rotation(), tie_head: bool = False) -> Model:
    """The model rotated: its blocks at once, or, streamed, each as it is made (torch_model.StreamedBlocks)."""
    if model.ffn_hadamard is not None:
        raise ValueError("the model is already rotated")
    seed = rotation.residual_seed
    return Model(model.config, rotate_globals(model.globals, seed, tie_head),
                 map_blocks(lambda b: rotate_block(b, seed, rotation.ffn_hadamard), model.blocks),
                 ffn_hadamard=hadamard_transform if rotation.ffn_hadamard else None)


def gguf_metadata(rotation: Rotation, n_ff: int) -> dict[str, object]:
    """The pvq.rotation.* keys of docs/rotation.md for a model rotated with `rotation`."""
    meta: dict[str, object] = {"pvq.rotation.norms_folded": True, "pvq.rotation.residual": rotation.residual,
                               "pvq.rotation.seed": rotation.seed,
                               "pvq.rotation.ffn_hadamard": rotation.ffn_hadamard}
    if rotation.ffn_hadamard:
        pl = plan(n_ff)
        meta.update({"pvq.rotation.ffn_hadamard.p": pl.p,
                     "pvq.rotation.ffn_hadamard.base": pl.base.reshape(-1).tolist(),
                     "pvq.rotation.ffn_hadamard.scale": pl.scale,
                     "pvq.rotation.ffn_hadamard.construction": pl.construction})
    return meta
