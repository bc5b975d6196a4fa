"""pvq.Llama: the runtime behind llama-cpp-python's `Llama` interface (same arguments, same result dicts), so
that switching is a change of import. Differences are listed in docs/python.md."""
from __future__ import annotations

import multiprocessing
import random
import sys
import threading
import time
import uuid
from collections import deque

import numpy as np

from ._lib import ContextFullError, ModelLoadError, PvqError, check, error_buffer, ffi, lib, ERR_LEN
from .chat import ChatTemplate
from .gguf_meta import read_metadata
from .textstream import TextStream

_BAD_TOKEN = -2 ** 31  # pvq_token_to_piece's answer for an id outside the vocabulary
DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED; each completion derives its own seed from it


class _Sampler:
    """One pvq_sampler for one generation (freed by the garbage collector with the generator)."""

    def __init__(self, n_vocab, temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed):
        p = lib.pvq_sampler_default_params()
        p.temp, p.top_k, p.top_p, p.min_p = temp, top_k, top_p, min_p
        p.repeat_penalty, p.repeat_last_n, p.seed = repeat_penalty, repeat_last_n, seed
        out, err = ffi.new("pvq_sampler **"), error_buffer()
        check(lib.pvq_sampler_new(ffi.new("pvq_sampler_params *", p), n_vocab, out, err, ERR_LEN), err)
        self.ptr = ffi.gc(out[0], lib.pvq_sampler_free)


class _Weights:
    """A loaded pvq_model (read-only, so any thread may use it) and how many Llama objects hold it: the last
    one to close frees it. The token-piece cache belongs here too, as it depends on the model alone."""

    def __init__(self, path: str):
        out, err = ffi.new("pvq_model **"), error_buffer()
        check(lib.pvq_model_load(path.encode(), out, err, ERR_LEN), err, ModelLoadError)
        self.ptr = out[0]
        self.pieces = [None] * lib.pvq_n_vocab(self.ptr)  # token -> bytes, filled on first use
        self.holders = 0
        self._lock = threading.Lock()

    def hold(self):
        with self._lock:
            self.holders += 1
        return self.ptr

    def release(self) -> None:
        with self._lock:
            self.holders -= 1
            if self.holders == 0:
                lib.pvq_model_free(self.ptr)
                self.ptr = None


class Llama:
    """A model and one context (KV cache). Not for concurrent use: see docs/python.md, "Threads"."""

    def __init__(self, model_path: str, *, n_ctx: int = 512, n_batch: int = 512, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = DEFAULT_SEED, logits_all: bool = False,
                 last_n_tokens_size: int = 64, verbose: bool = True):
        self._open(_Weights(str(model_path)), str(model_path), dict(
            n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, n_gpu_layers=n_gpu_layers, seed=seed,
            logits_all=logits_all, last_n_tokens_size=last_n_tokens_size, verbose=verbose))

    def share(self) -> "Llama":
        """Another Llama over the same loaded weights with a context (KV cache) of its own, made with this one's
        arguments: one Llama per thread without loading the model again. Each is closed on its own; the
        weights are freed with the last of them."""
        twin = Llama.__new__(Llama)
        with self._lock:
            self._live()
            twin._open(self._weights, self.model_path, self._args)
        return twin

    def _open(self, weights: _Weights, model_path: str, args: dict) -> None:
        self._model = self._ctx = self._weights = None
        self._lock = threading.RLock()
        self._args = args
        self.model_path = model_path
        self.verbose = verbose = args["verbose"]
        self._seed = args["seed"]
        self._logits_all = bool(args["logits_all"])
        self.last_n_tokens_size = args["last_n_tokens_size"]
        n_ctx, n_batch, n_threads = args["n_ctx"], args["n_batch"], args["n_threads"]

        self._model, self._weights = weights.hold(), weights
        err = error_buffer()
        self.n_threads = n_threads or max(multiprocessing.cpu_count() // 2, 1)
        self.n_batch = min(n_ctx, n_batch) if n_ctx > 0 else n_batch
        params = lib.pvq_context_default_params()
        params.n_ctx, params.n_batch, params.n_threads, params.logits_all = n_ctx, self.n_batch, self.n_threads, \
            int(self._logits_all)
        # the runtime warns once when it falls back to the CPU, and refuses a partial offload (PvqError)
        params.n_gpu_layers = args["n_gpu_layers"]
        cout = ffi.new("pvq_context **")
        try:
            check(lib.pvq_context_new(self._model, ffi.new("pvq_context_params *", params), cout, err, ERR_LEN), err)
        except PvqError:
            self.close()
            raise
        self._ctx = cout[0]

        self._n_ctx = lib.pvq_n_ctx(self._ctx)
        self._n_vocab = lib.pvq_n_vocab(self._model)
        self._bos, self._eos = lib.pvq_token_bos(self._model), lib.pvq_token_eos(self._model)
        self._pieces = weights.pieces
        self._token_buf = ffi.new("int32_t[1]")
        self._err = error_buffer()
        self.n_tokens = 0
        self.input_ids = np.zeros(self._n_ctx, dtype=np.intc)
        # every evaluated token's logits with logits_all, else the last evaluated token's
        self.scores = np.zeros((self._n_ctx if self._logits_all else 1, self._n_vocab), dtype=np.single)
        self._metadata = self._chat = None
        if verbose:
            buf = ffi.new("char[]", 1024)
            lib.pvq_model_describe(self._model, buf, 1024)
            print(f"pvq: {ffi.string(buf).decode()} (n_ctx {self._n_ctx}, {self.n_threads} threads)", file=sys.stderr)

    # ---- lifetime
    def close(self) -> None:
        """Frees the context, and the model unless a Llama made by share() still holds it; later calls raise
        PvqError. Safe to call twice."""
        with self._lock:
            if self._ctx is not None:
                lib.pvq_context_free(self._ctx)
                self._ctx = None
            if self._model is not None:
                self._model = None
                self._weights.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if hasattr(self, "_lock"):
            self.close()

    def _live(self):
        if self._ctx is None:
            raise PvqError(f"pvq.Llama({self.model_path!r}) is closed; create a new one to use the model")
        return self._ctx

    # ---- sizes and special tokens
    def n_ctx(self) -> int:
        self._live()
        return self._n_ctx

    def n_vocab(self) -> int:
        self._live()
        return self._n_vocab

    def n_embd(self) -> int:
        with self._lock:
            self._live()
            return lib.pvq_n_embd(self._model)

    def token_bos(self) -> int:
        return self._bos

    def token_eos(self) -> int:
        return self._eos

    @property
    def metadata(self) -> dict:
        """Scalar and string GGUF metadata (arrays such as the vocabulary are left out)."""
        if self._metadata is None:
            self._metadata = read_metadata(self.model_path)
        return self._metadata

    # ---- tokens
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of UTF-8 text. add_bos: BOS (and EOS) as the vocabulary asks; special: parse control
        tokens' texts such as <|im_start|>."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        n_out, err = ffi.new("int32_t *"), error_buffer()
        cap = len(text) + 8
        while True:
            out = ffi.new("int32_t[]", cap)
            with self._lock:
                self._live()
                st = lib.pvq_tokenize(self._model, text, len(text), int(add_bos), int(special), out, cap, n_out,
                                      err, ERR_LEN)
            if st != lib.PVQ_ERR_TOO_LONG:
                break
            cap = n_out[0]
        check(st, err)
        return list(ffi.unpack(out, n_out[0]))

    def _piece(self, token: int, special: bool = False) -> bytes:
        piece = None if special else self._pieces[token] if 0 <= token < self._n_vocab else None
        if piece is None:
            buf = ffi.new("char[]", 256)
            with self._lock:
                self._live()
                n = lib.pvq_token_to_piece(self._model, token, buf, 256, int(special))
                if n == _BAD_TOKEN:
                    raise ValueError(f"token id {token} is not in the vocabulary (0..{self._n_vocab - 1})")
                if n < 0:  # a piece longer than the buffer
                    buf = ffi.new("char[]", -n)
                    n = lib.pvq_token_to_piece(self._model, token, buf, -n, int(special))
            piece = ffi.unpack(buf, n)
            if not special:
                self._pieces[token] = piece
        return piece

    def detokenize(self, tokens, prev_tokens=None, special: bool = False) -> bytes:
        """The bytes of the tokens (pieces joined; as in llama-cpp-python a leading space after BOS is dropped).
        prev_tokens is accepted for compatibility and, as in llama-cpp-python's own tokenizer, not used."""
        self._live()
        out = b"".join(self._piece(int(t), special) for t in tokens)
        if len(tokens) > 0 and tokens[0] == self._bos and out[:1] == b" ":
            out = out[1:]
        return out

    # ---- evaluation
    def reset(self) -> None:
        self.n_tokens = 0

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    def eval(self, tokens) -> None:
        """Runs the model on tokens after the first n_tokens of the cache (anything later is dropped)."""
        n = len(tokens)
        if n == 0:
            return
        with self._lock:
            ctx = self._live()
            lib.pvq_kv_truncate(ctx, self.n_tokens)
            if n == 1:
                buf = self._token_buf
                buf[0] = int(tokens[0])
            else:
                buf = ffi.new("int32_t[]", [int(t) for t in tokens])
            check(lib.pvq_eval(ctx, buf, n, self._err, ERR_LEN), self._err)
            past = self.n_tokens
            self.input_ids[past:past + n] = tokens
            if self._logits_all:
                for i in range(n):
                    self.scores[past + i] = self._logits_row(ctx, i)
            else:
                self.scores[0] = self._logits_row(ctx, -1)
            self.n_tokens = past + n

    def _logits_row(self, ctx, i: int) -> np.ndarray:
        return np.frombuffer(ffi.buffer(lib.pvq_logits(ctx, i), 4 * self._n_vocab), dtype=np.single)

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[:self.n_tokens]

    @property
    def _scores(self) -> np.ndarray:
        """Logits of every evaluated token (logits_all=True), else of the last one."""
        return self.scores[:self.n_tokens] if self._logits_all else self.scores

    @property
    def eval_tokens(self) -> deque:
        return deque(self._input_ids.tolist(), maxlen=self._n_ctx)

    @property
    def eval_logits(self) -> deque:
        return deque(self._scores.tolist(), maxlen=self._n_ctx if self._logits_all else 1)

    @staticmethod
    def logits_to_logprobs(logits, axis: int = -1) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.single)
        top = np.max(logits, axis=axis, keepdims=True)
        shifted = logits - np.where(np.isfinite(top), top, 0)
        with np.errstate(divide="ignore"):
            return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))

    def generate(self, tokens, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True, seed: int | None = None):
        """Yields sampled tokens forever (the caller stops); each is evaluated before the next is sampled.
        reset: reuse the longest cached prefix of tokens and evaluate the rest; otherwise continue the cache."""
        sampler = _Sampler(self._n_vocab, temp, top_k, top_p, min_p, repeat_penalty, self.last_n_tokens_size,
                           self._seed if seed is None else seed)
        tokens = list(tokens)
        if reset:
            cached = self._input_ids
            keep = 0
            while keep < min(len(cached), len(tokens) - 1) and cached[keep] == tokens[keep]:
                keep += 1
            self.n_tokens, tokens = keep, tokens[keep:]
        while True:
            self.eval(tokens)
            with self._lock:
                token = lib.pvq_sampler_sample(sampler.ptr, lib.pvq_logits(self._live(), -1))
            lib.pvq_sampler_accept(sampler.ptr, token)
            yield token
            tokens = [token]

    # ---- completions
    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) if prompt else [self._bos]
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ValueError("the prompt is empty")
        self._live()
        if len(tokens) >= self._n_ctx:
            raise ContextFullError(f"the prompt is {len(tokens)} tokens but the context holds {self._n_ctx} "
                                   f"(n_ctx), and at least one position must stay free to generate",
                                   lib.PVQ_ERR_CONTEXT_FULL)
        return tokens

    def create_completion(self, prompt, suffix=None, max_tokens: int | None = 16, temperature: float = 0.8,
                          top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                          logprobs: int | None = None, echo: bool = False, stop=None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, model: str | None = None):
        """Completes prompt (text or token ids). Returns llama-cpp-python's completion dict, or with stream=True
        an iterator of its chunk dicts. temperature 0 is greedy."""
        unsupported = {"suffix": suffix is not None, "typical_p": typical_p != 1.0,
                       "frequency_penalty": frequency_penalty != 0.0, "presence_penalty": presence_penalty != 0.0}
        if any(unsupported.values()):
            raise NotImplementedError(f"pvq.Llama does not support {[k for k, v in unsupported.items() if v]}")
        if logprobs is not None and not self._logits_all:
            raise ValueError("logprobs needs a Llama created with logits_all=True")
        prompt_tokens = self._prompt_tokens(prompt)
        room = self._n_ctx - len(prompt_tokens)
        max_tokens = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if seed is None:  # as llama-cpp-python: a new seed per call, derived from the previous one
            self._seed = seed = random.Random(self._seed).randint(0, 2 ** 32)
        chunks = self._completion(prompt, prompt_tokens, max_tokens, stops, stream, echo, logprobs, model,
                                  dict(temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                       repeat_penalty=repeat_penalty, seed=seed))
        return chunks if stream else next(chunks)

    __call__ = create_completion

    def _completion(self, prompt, prompt_tokens, max_tokens, stops, stream, echo, n_logprobs, model, sampling):
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        prompt_text = prompt if isinstance(prompt, str) else self.detokenize(prompt_tokens).decode("utf-8", "replace")

        def chunk(text, finish_reason=None, logprobs=None):
            return {**head, "choices": [{"text": text, "index": 0, "logprobs": logprobs,
                                         "finish_reason": finish_reason}]}

        text = TextStream(stops)
        completion, records = [], []
        finish_reason = "length"
        if stream and echo:
            yield chunk(prompt_text)
        generator = self.generate(prompt_tokens, **sampling)
        try:
            for token in generator:
                if lib.pvq_token_is_eog(self._model, token):
                    finish_reason = "stop"
                    break
                completion.append(token)
                if n_logprobs is not None:
                    records.append(self._logprob_record(token, len(prompt_tokens) + len(completion) - 2, n_logprobs))
                if text.push(self._piece(token)):
                    finish_reason = "stop"
                    break
                if stream:
                    new = text.ready()
                    if new:
                        yield chunk(new, logprobs=self._logprobs_dict(records, len(prompt_text)) if records else None)
                        records = []
                if len(completion) >= max_tokens:
                    break
        finally:
            generator.close()
        usage = {"prompt_tokens": len(prompt_tokens), "completion_tokens": len(completion),
                 "total_tokens": len(prompt_tokens) + len(completion)}
        if stream:
            rest = text.flush()
            if rest:
                yield chunk(rest, logprobs=self._logprobs_dict(records, len(prompt_text)) if records else None)
            yield chunk("", finish_reason)
            return
        result = chunk((prompt_text if echo else "") + text.text(), finish_reason,
                       self._logprobs_dict(records, 0 if echo else len(prompt_text)) if n_logprobs is not None
                       else None)
        result["usage"] = usage
        yield result

    def _logprob_record(self, token: int, row: int, n_top: int):
        """(token text, its log-probability, {text: logprob} of the n_top most likely) at scores[row]."""
        lp = self.logits_to_logprobs(self.scores[row])
        top = np.argpartition(-lp, n_top)[:n_top] if n_top > 0 else np.empty(0, dtype=int)
        top = top[np.argsort(-lp[top], kind="stable")]
        text = self._piece(token).decode("utf-8", "ignore")
        tops = {self._piece(int(i)).decode("utf-8", "ignore"): float(lp[i]) for i in top}
        tops[text] = float(lp[token])
        return text, float(lp[token]), tops

    @staticmethod
    def _logprobs_dict(records, offset: int) -> dict:
        offsets = []
        for text, _, _ in records:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": [r[0] for r in records], "text_offset": offsets,
                "token_logprobs": [r[1] for r in records], "top_logprobs": [r[2] for r in records]}

    # ---- chat
    def _chat_template(self) -> ChatTemplate:
        if self._chat is None:
            source = self.metadata.get("tokenizer.chat_template")
            if not source:
                raise ValueError(f"{self.model_path} has no chat template (tokenizer.chat_template)")
            special = lambda t: self._piece(t, special=True).decode("utf-8", "ignore") if t >= 0 else ""
            self._chat = ChatTemplate(source, bos_token=special(self._bos), eos_token=special(self._eos))
        return self._chat

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text the model's chat template makes of messages ([{"role", "content"}, ...]); with
        add_generation_prompt it ends where the assistant's turn begins. Tokenize it with special=True."""
        self._live()
        return self._chat_template().render(messages, add_generation_prompt=add_generation_prompt, **extra)

    def _chat_prompt_tokens(self, messages, **template_args) -> list[int]:
        """The tokens of the prompt that create_chat_completion generates from."""
        prompt = self.apply_chat_template(messages, **template_args)
        return self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def create_chat_completion(self, messages, functions=None, function_call=None, tools=None, tool_choice=None,
                               temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                               typical_p: float = 1.0, stream: bool = False, stop=None, seed: int | None = None,
                               response_format=None, max_tokens: int | None = None, presence_penalty: float = 0.0,
                               frequency_penalty: float = 0.0, repeat_penalty: float = 1.0, model: str | None = None,
                               logprobs: bool | None = None, top_logprobs: int | None = None):
        """Renders messages with the model's chat template and completes the assistant's turn; returns
        llama-cpp-python's chat.completion dict or, with stream=True, its chunk iterator. The template is
        passed functions/tools like llama-cpp-python does; constrained tool calls are not supported."""
        if isinstance(tool_choice, dict) or isinstance(function_call, dict) or response_format is not None:
            raise NotImplementedError("pvq.Llama has no grammar-constrained output (tool_choice, function_call "
                                      "by name, response_format)")
        tokens = self._chat_prompt_tokens(messages, functions=functions, function_call=function_call, tools=tools,
                                          tool_choice=tool_choice)
        template = self._chat_template()
        stops = ([stop] if isinstance(stop, str) else list(stop or [])) + [template.eos_token]
        result = self.create_completion(tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        min_p=min_p, typical_p=typical_p, logprobs=top_logprobs if logprobs else None,
                                        stop=stops, frequency_penalty=frequency_penalty,
                                        presence_penalty=presence_penalty, repeat_penalty=repeat_penalty,
                                        top_k=top_k, stream=stream, seed=seed, model=model)
        return _chat_chunks(result) if stream else _chat_result(result)


def _chat_logprobs(logprobs):
    if logprobs is None:
        return None
    return {"content": [{"token": t, "bytes": None, "logprob": lp,
                         "top_logprobs": [{"token": k, "logprob": v, "bytes": None} for k, v in tops.items()]}
                        for t, lp, tops in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                               logprobs["top_logprobs"])],
            "refusal": None}


def _chat_result(completion) -> dict:
    choice = completion["choices"][0]
    return {"id": "chat" + completion["id"], "object": "chat.completion", "created": completion["created"],
            "model": completion["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                         "logprobs": _chat_logprobs(choice["logprobs"]), "finish_reason": choice["finish_reason"]}],
            "usage": completion["usage"]}


def _chat_chunks(chunks):
    for i, c in enumerate(chunks):
        head = {"id": "chat" + c["id"], "model": c["model"], "created": c["created"],
                "object": "chat.completion.chunk"}
        choice = c["choices"][0]
        if i == 0:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                        "finish_reason": None}]}
        delta = {"content": choice["text"]} if choice["finish_reason"] is None else {}
        yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": _chat_logprobs(choice["logprobs"]),
                                    "finish_reason": choice["finish_reason"]}]}
