"""`make demo`: fetch SmolLM2-135M-Instruct, convert it to PVQ at 3.25 bits per parameter of the whole file, and
show what was kept: the F16 reference's and the PVQ file's greedy answers to one question, one above the
other, both files' sizes, and the PVQ file's KL divergence from the reference on text the calibration never saw.

The model is an instruct model, so the question goes in as a user would ask it: through the model's own chat
template (`Llama.apply_chat_template`, the file's `tokenizer.chat_template`), and the answer ends at the
model's end of turn or after N_PREDICT tokens.

The conversion is the converter's default with `--calib` (Hessian-aware PVQ of every matrix, embedding
included, calibrated on 16 x 512 tokens, 12 windows of the shared eval text's first half and 4 sequences the model
writes itself, then scale tuning; about 13
minutes on 2 cores; with 8 x 512 the continuation below degenerated into a loop). Its output is kept in $PVQ_CACHE under a name that changes with the converter's inputs
(models/smollm2.py, pvq_gguf), so a second `make demo` only generates and scores."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from models.smollm2 import ensure, pvq_gguf

QUESTION = "What are the three most useful Debian commands for a new user?"
MESSAGES = [{"role": "user", "content": QUESTION}]
N_PREDICT = 48
KLD_CHUNKS = 8    # x 512 tokens of the eval text's second half (the calibration read the first)


def chat_prompt(path: Path) -> str:
    """QUESTION rendered by the file's chat template, ending where the assistant's turn begins."""
    from pvq import Llama
    with Llama(str(path), n_ctx=512, n_threads=2, verbose=False) as llm:
        return llm.apply_chat_template(MESSAGES)


def continuation(path: Path) -> tuple[str, list[int]]:
    """The runtime's greedy answer to QUESTION, as `pvqrun -f <chat prompt> -n N_PREDICT --temp 0` makes it:
    (text, token ids), up to the end of turn."""
    from pvq import Llama
    with Llama(str(path), n_ctx=512, n_threads=2, verbose=False) as llm:
        prompt = llm.tokenize(llm.apply_chat_template(MESSAGES).encode(), add_bos=False, special=True)
        ids = []
        for token in llm.generate(prompt, temp=0.0):
            if token == llm.token_eos() or len(ids) == N_PREDICT:
                break
            ids.append(token)
        return llm.detokenize(ids, prev_tokens=prompt).decode("utf-8", errors="replace"), ids


def held_out_kld(model: Path) -> float:
    """Mean KL(F16 || model) over KLD_CHUNKS of llama-perplexity's chunks of 512 tokens of the eval text's
    second half (bench.file_quality: the file run by the C runtime, the reference by llama.cpp)."""
    from bench.file_quality import file_scores
    return file_scores(model, ("prose",), KLD_CHUNKS)["prose"].mean_kld


def main() -> None:
    paths = ensure()
    out = pvq_gguf(3.25)
    if shutil.which("pvqrun") is None:
        raise SystemExit("pvqrun is not on the PATH: run `make setup`")
    prompt_file = out.parent / "demo-chat-prompt.txt"
    prompt = chat_prompt(paths.f16_gguf)
    prompt_file.write_text(prompt)
    print(f"The question, in the model's chat template ({prompt_file}):\n{prompt}")
    for label, path in (("F16 reference", paths.f16_gguf), ("PVQ 3.25", out)):
        print(f"\n--- {label}: {path.name}, {path.stat().st_size / 1e6:.1f} MB")
        cmd = ["pvqrun", "-m", str(path), "-f", str(prompt_file), "-n", str(N_PREDICT), "--temp", "0", "-t", "2"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    kld = held_out_kld(out)
    print(f"\nPVQ 3.25 against F16 on held-out text ({KLD_CHUNKS} chunks of 512 tokens of the eval text's second half, "
          f"which the calibration never read): KL divergence {kld:.4f}")


if __name__ == "__main__":
    main()
