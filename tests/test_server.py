"""python -m pvq.server on the SmolLM2 F16 file, through the real `openai` client and raw HTTP: the same greedy
text as pvq.Llama in process and as llama-cpp-python's own server; streams that concatenate to the
non-streamed text; concurrent clients; a full queue (503); a client that leaves mid-stream; hundreds of
hostile requests (each a 4xx, nothing leaks); the API key and the default address."""
from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time

import pytest
from openai import AuthenticationError, OpenAI

from bindings_util import import_pvq
from server_util import ROOT, events, get_json, listen_addresses, request, rss_bytes, serve

N_CTX = 512
MAX_TOKENS = 24
COMPLETIONS = ["The capital of France is", "Here is a short story about a robot:"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Name three colors."}]]
# llama-cpp-python's server penalises repeats (1.1) unless told; pvq's server and pvq.Llama default to 1.0
GREEDY = dict(temperature=0, max_tokens=MAX_TOKENS, extra_body={"repeat_penalty": 1.0})
SERVER_ARGS = ("--n_ctx", str(N_CTX), "--n_threads", "2")


@pytest.fixture(scope="module")
def reference(smollm2):
    pvq = import_pvq()
    llm = pvq.Llama(str(smollm2.f16_gguf), n_ctx=N_CTX, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


def in_process(llm, call):
    llm.reset()  # from an empty cache, as the server runs every request
    return call(llm)


@pytest.fixture(scope="module")
def server(smollm2):
    """pvq's server with two slots; yields (base URL, process, model name)."""
    with serve("pvq.server", smollm2.f16_gguf, *SERVER_ARGS, "--parallel", "2", "--logits_all", "true") as (
            base, proc):
        yield base, proc, get_json(base, "/v1/models")["data"][0]["id"]


def client(base, key="unused") -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)


def texts_via_openai(base, model):
    """{(kind, index, streamed): (text, finish_reason)} for every prompt and chat, streamed and not."""
    api, out = client(base), {}
    for i, prompt in enumerate(COMPLETIONS):
        r = api.completions.create(model=model, prompt=prompt, **GREEDY)
        out["completion", i, False] = r.choices[0].text, r.choices[0].finish_reason, r.usage.total_tokens
        chunks = list(api.completions.create(model=model, prompt=prompt, stream=True, **GREEDY))
        out["completion", i, True] = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    for i, messages in enumerate(CHATS):
        r = api.chat.completions.create(model=model, messages=messages, **GREEDY)
        out["chat", i, False] = r.choices[0].message.content, r.choices[0].finish_reason, r.usage.total_tokens
        chunks = list(api.chat.completions.create(model=model, messages=messages, stream=True, **GREEDY))
        out["chat", i, True] = ("".join(c.choices[0].delta.content or "" for c in chunks),
                                chunks[-1].choices[0].finish_reason)
    return out


def test_openai_client_gets_the_in_process_and_the_peers_text(server, reference, smollm2):
    base, _, model = server
    mine = texts_via_openai(base, model)
    with serve("llama_cpp.server", smollm2.f16_gguf, *SERVER_ARGS, "--host", "127.0.0.1") as (peer_base, _):
        peer_model = get_json(peer_base, "/v1/models")["data"][0]["id"]
        peer = texts_via_openai(peer_base, peer_model)
    for i, prompt in enumerate(COMPLETIONS):
        want = in_process(reference, lambda m: m.create_completion(prompt, temperature=0, max_tokens=MAX_TOKENS))
        expect = want["choices"][0]["text"], want["choices"][0]["finish_reason"], want["usage"]["total_tokens"]
        assert expect[0], prompt
        assert mine["completion", i, False] == expect
        assert mine["completion", i, True] == expect[:2]
        assert peer["completion", i, False][:2] == peer["completion", i, True] == expect[:2]
    for i, messages in enumerate(CHATS):
        want = in_process(reference, lambda m: m.create_chat_completion(messages, temperature=0,
                                                                       max_tokens=MAX_TOKENS))
        expect = (want["choices"][0]["message"]["content"], want["choices"][0]["finish_reason"],
                  want["usage"]["total_tokens"])
        assert expect[0], messages
        assert mine["chat", i, False] == expect
        assert mine["chat", i, True] == expect[:2]
        assert peer["chat", i, False][:2] == peer["chat", i, True] == expect[:2]


def test_stop_seed_and_logprobs_as_in_process(server, reference):
    base, _, model = server
    api = client(base)
    prompt = "List three fruits:\n1."
    r = api.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=48, stop=["\n3"])
    want = in_process(reference, lambda m: m.create_completion(prompt, temperature=0, max_tokens=48, stop=["\n3"]))
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want["choices"][0]["text"], "stop")

    sampled = [api.completions.create(model=model, prompt=prompt, temperature=1.0, seed=1234, max_tokens=16)
               .choices[0].text for _ in range(2)]
    want = in_process(reference, lambda m: m.create_completion(prompt, temperature=1.0, seed=1234, max_tokens=16))
    assert sampled == [want["choices"][0]["text"]] * 2

    r = api.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=8, logprobs=3)
    want = in_process(reference, lambda m: m.create_completion(prompt, temperature=0, max_tokens=8, logprobs=3))
    got, expect = r.choices[0].logprobs, want["choices"][0]["logprobs"]
    assert got.tokens == expect["tokens"] and got.text_offset == expect["text_offset"]
    assert got.token_logprobs == pytest.approx(expect["token_logprobs"], abs=1e-5)
    assert [len(t) for t in got.top_logprobs] == [len(t) for t in expect["top_logprobs"]]

    chat = api.chat.completions.create(model=model, messages=CHATS[0], temperature=0, max_tokens=6, logprobs=True,
                                       top_logprobs=2)
    assert [t.token for t in chat.choices[0].logprobs.content] and all(
        len(t.top_logprobs) >= 2 for t in chat.choices[0].logprobs.content)


def test_concurrent_streams_each_get_their_own_text(server, reference):
    """6 streaming clients at once on 2 slots (4 wait in the queue), 2 requests each: every text is the one the
    prompt gives alone."""
    base, _, model = server
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(6)]
    want = [in_process(reference, lambda m: m.create_completion(p, temperature=0, max_tokens=12))["choices"][0]["text"]
            for p in prompts]
    got, errors = {}, []

    def run(i):
        try:
            api = client(base)
            for rep in range(2):
                chunks = api.completions.create(model=model, prompt=prompts[i], temperature=0, max_tokens=12,
                                                stream=True)
                got[i, rep] = "".join(c.choices[0].text for c in chunks)
        except Exception as e:  # reported below, with the client's index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors
    assert got == {(i, rep): want[i] for i in range(len(prompts)) for rep in range(2)}
    assert get_json(base, "/health") == {"status": "ok", "slots": 2, "slots_idle": 2, "queued": 0}


def _wait_for(base, key, value, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (health := get_json(base, "/health"))[key] != value:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_full_queue_503_and_a_dropped_stream_frees_its_slot(smollm2, reference):
    """One slot, a queue of one: a long stream holds the slot, a second request waits, a third gets 503 with
    Retry-After. The first client drops its stream after a few tokens; the waiting request then gets the slot
    long before the dropped generation could have finished, and its text is its own."""
    with serve("pvq.server", smollm2.f16_gguf, *SERVER_ARGS, "--parallel", "1", "--max_queue", "1") as (base, _):
        long = {"prompt": "Once upon a time", "max_tokens": N_CTX - 16, "temperature": 0, "stream": True}
        with events(base, "/v1/completions", long) as (status, stream):
            assert status == 200
            arrivals = []
            for _ in zip(range(6), stream):
                arrivals.append(time.monotonic())
            per_token = statistics.median(b - a for a, b in zip(arrivals[1:], arrivals[2:]))

            queued = {}
            short = "The capital of France is"
            waiter = threading.Thread(target=lambda: queued.update(r=request(
                base, "POST", "/v1/completions", {"prompt": short, "max_tokens": 8, "temperature": 0})))
            waiter.start()
            _wait_for(base, "queued", 1)
            status, headers, body = request(base, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "server_busy"
            dropped = time.monotonic()
        waiter.join(timeout=300)
        waited = time.monotonic() - dropped
        left = long["max_tokens"] - len(arrivals)
        assert waited < 0.25 * left * per_token, (waited, left, per_token)
        want = in_process(reference, lambda m: m.create_completion(short, temperature=0, max_tokens=8))
        assert json.loads(queued["r"][2])["choices"][0]["text"] == want["choices"][0]["text"]
        _wait_for(base, "slots_idle", 1)


def hostile_requests(model: str, seed: int = 0):
    """(method, path, body bytes) of requests that must each get a 4xx: broken bodies, every field mistyped or
    out of range, unsupported options, an unknown model, prompts longer than the context, a body over the
    limit, unknown URLs and methods, then seeded random mutations and truncations of valid bodies."""
    completion = {"model": model, "prompt": "Hi", "max_tokens": 4}
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    long_text = "word " * (2 * N_CTX)
    shared = {
        "model": [5, [], {}, "another-model", ""],
        "max_tokens": [-1, 0, -10 ** 30, 10 ** 30, N_CTX, 1.5, "16", True, [16], {}],
        "temperature": [-0.1, 2.01, "hot", True, [], {}],
        "top_p": [-0.1, 1.5, "x", False],
        "top_k": [-1, 2 ** 31, 1.5, "k"],
        "min_p": [-1, 2, "m"],
        "repeat_penalty": [0, -1, 1000, "r"],
        "stop": [5, [1], ["a"] * 5, {"a": 1}, [None], True],
        "stream": ["yes", 1, [], {}],
        "seed": [1.5, "1", 2 ** 64, -(2 ** 63) - 1, []],
        "n": [0, 2, -1, "1"],
        "frequency_penalty": [0.5, 3, "x"],
        "presence_penalty": [-0.5, -3],
        "logit_bias": [{"1": 5}, [], "x", {"1": "x"}],
        "stream_options": [{"include_usage": True}, "x", 5],
        "user": [5, []],
    }
    endpoints = [  # (path, a valid body, {field: wrong values} of this endpoint)
        ("/v1/completions", completion, {
            **shared, "prompt": [5, 3.5, True, {}, [], [-1], [49152], [10 ** 12], ["a"], [1.5], [True], long_text,
                                 "\ud800"],
            "logprobs": [-1, 21, "3", 1.5], "echo": ["true", 1], "suffix": ["tail", 5]}),
        ("/v1/chat/completions", chat, {
            **shared, "messages": [[], "hi", {}, [5], [{}], [{"role": 5}], [{"role": "user", "content": 5}],
                                   [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                                   [{"role": "", "content": "x"}], [{"role": "user", "content": [{"type": "text"}]}],
                                   [{"role": "user", "content": long_text}], [{"role": "user", "content": "\udfff"}]],
            "logprobs": ["yes", 1], "top_logprobs": [-1, 21, "x"], "tools": ["x", 5, [5]],
            "tool_choice": [{"type": "function", "function": {"name": "f"}}, 5],
            "response_format": [{"type": "json_object"}, "json", 5], "functions": ["x"],
            "function_call": [{"name": "f"}, 5]}),
    ]
    out = []
    for path, valid, fields in endpoints:
        out += [("POST", path, json.dumps({**valid, field: v}).encode()) for field, vs in fields.items() for v in vs]
        required = "prompt" if "prompt" in valid else "messages"
        out.append(("POST", path, json.dumps({k: v for k, v in valid.items() if k != required}).encode()))
        out += [("POST", path, body) for body in (
            b"", b"{", b"not json", b"[]", b"null", b"5", b'"str"', b"\xff\xfe\x00garbage", b"[" * 100000,
            b'{"a":' * 50000, b'{"prompt": NaN, "messages": NaN}', b'{"prompt": "x", "max_tokens": Infinity}',
            b'{"prompt": "x", "messages": [], "temperature": 1e400}',
            json.dumps({**valid, required: "a" * (2 << 20)}).encode())]
    out += [("GET", "/v1/completions", b""), ("POST", "/v1/models", b"{}"), ("GET", "/v1/nope", b""),
            ("POST", "/v1/chat/completion", b"{}"), ("DELETE", "/health", b""), ("PUT", "/v1/completions", b"{}")]
    rng = random.Random(seed)
    while len(out) < 520:
        path, valid, fields = rng.choice(endpoints)
        kind = rng.randrange(3)
        if kind == 0:  # two or three wrong fields at once
            picked = rng.sample(sorted(fields), rng.randint(2, 3))
            body = json.dumps({**valid, **{f: rng.choice(fields[f]) for f in picked}}).encode()
        elif kind == 1:  # a valid body cut short (no proper prefix of a JSON object is JSON)
            whole = json.dumps(valid).encode()
            body = whole[:rng.randrange(len(whole) - 1)]
        else:  # random bytes
            body = rng.randbytes(rng.randint(1, 300))
        out.append(("POST", path, body))
    return out


def test_hostile_requests_get_4xx_and_leak_nothing(server, reference):
    base, proc, model = server
    requests = hostile_requests(model)
    assert len(requests) >= 500
    answers = []

    def send_all(batch):
        for method, path, body in batch:
            status, _, text = request(base, method, path, body)
            answers.append((method, path, body[:80], status, text[:300]))

    send_all(requests[:100])  # warms the allocator, the threads and the caches before the first measure
    rss = rss_bytes(proc.pid)
    send_all(requests[100:])
    grown = rss_bytes(proc.pid) - rss
    wrong = []
    for method, path, body, status, text in answers:
        try:
            error = json.loads(text)["error"]
            shaped = set(error) == {"message", "type", "param", "code"} and error["message"]
        except (ValueError, KeyError, TypeError):
            shaped = False
        if not (400 <= status < 500 and shaped):
            wrong.append((method, path, body, status, text))
    assert not wrong, wrong[:5]
    assert {a[3] for a in answers} >= {400, 404, 405, 413}
    assert grown < 16 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over {len(requests) - 100} hostile requests"
    assert get_json(base, "/health") == {"status": "ok", "slots": 2, "slots_idle": 2, "queued": 0}
    r = client(base).completions.create(model=model, prompt=COMPLETIONS[0], temperature=0, max_tokens=8)
    want = in_process(reference, lambda m: m.create_completion(COMPLETIONS[0], temperature=0, max_tokens=8))
    assert r.choices[0].text == want["choices"][0]["text"]


def test_api_key_and_the_default_address(smollm2):
    with serve("pvq.server", smollm2.f16_gguf, *SERVER_ARGS, "--api-key", "s3cret") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        assert listen_addresses(port) == {"127.0.0.1"}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            status, _, body = request(base, "GET", "/v1/models", headers=headers)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
            assert request(base, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, headers)[0] == 401
        assert request(base, "GET", "/health")[0] == 200
        with pytest.raises(AuthenticationError):
            client(base, "wrong").models.list()
        api = client(base, "s3cret")
        model = api.models.list().data[0].id
        assert api.completions.create(model=model, prompt="Hi", max_tokens=2, temperature=0).usage.completion_tokens


def test_a_missing_model_file_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pvq.server", "--model", str(tmp_path / "missing.gguf")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PYTHONPATH": str(ROOT / "bindings"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and r.stderr.startswith("pvq.server: ") and "missing.gguf" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
