"""python -m pvq.server --model FILE: the OpenAI-compatible server (docs/server.md). The flags are named as
llama-cpp-python's server names them, where it has them."""
from __future__ import annotations

import argparse
import sys

from .. import Llama, PvqError


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")
    return value in ("1", "true", "yes", "on")


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pvq.server", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the GGUF file")
    p.add_argument("--model_alias", help="the model's name in the API (default: --model as given)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_at_least(0), default=8000)
    p.add_argument("--n_ctx", type=_at_least(0), default=2048, help="tokens per context (0: the model's, "
                   "capped at 4096)")
    p.add_argument("--n_batch", type=_at_least(1), default=512)
    p.add_argument("--n_threads", type=_at_least(1), default=None, help="runtime threads per context "
                   "(default: half the CPUs)")
    p.add_argument("--n_gpu_layers", type=int, default=0, help="-1: the whole model on the GPU (docs/cuda.md)")
    p.add_argument("--logits_all", type=_bool, default=False, help="keep every token's logits: needed for "
                   "logprobs (costs n_ctx x n_vocab floats per context)")
    p.add_argument("--parallel", type=_at_least(1), default=1, help="contexts over the one loaded model: "
                   "requests served at once")
    p.add_argument("--max_queue", type=_at_least(0), default=32, help="requests that may wait for a context; "
                   "more get 503 with Retry-After")
    p.add_argument("--api_key", "--api-key", dest="api_key", help="require Authorization: Bearer API_KEY")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn
        from .app import Server, create_app
        from .slots import Slots
    except ImportError as e:
        print(f"pvq.server: {e.name} is missing: pip install 'pvq[server]'", file=sys.stderr)
        return 1
    try:
        first = Llama(args.model, n_ctx=args.n_ctx, n_batch=args.n_batch, n_threads=args.n_threads,
                      n_gpu_layers=args.n_gpu_layers, logits_all=args.logits_all)
        llamas = [first] + [first.share() for _ in range(args.parallel - 1)]
    except (PvqError, ValueError) as e:
        print(f"pvq.server: {e}", file=sys.stderr)
        return 1
    server = Server(Slots(llamas, args.max_queue), args.model_alias or args.model, args.api_key)
    try:
        uvicorn.run(create_app(server), host=args.host, port=args.port)
    finally:
        for llm in llamas:
            llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
