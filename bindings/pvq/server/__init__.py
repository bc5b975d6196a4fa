"""An OpenAI-compatible HTTP server over pvq.Llama: `python -m pvq.server --model FILE` (docs/server.md).
Needs the `server` extra: pip install 'pvq[server]'."""
