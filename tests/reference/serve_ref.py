"""`llmtrain serve` checked with the OpenAI Python client (PyPI `openai`), run by tests/serve/server_test.cpp.

usage: serve_ref.py CLI MODEL ADAPTER_A ADAPTER_B

Starts `CLI serve --model MODEL --packed --adapter a=ADAPTER_A --adapter b=ADAPTER_B --port 0` and checks:
  - greedy completions and chat completions, streamed and not, give the text `CLI generate --json` gives
    (the same model flags, --adapter for an adapter, --chat for chat);
  - a sampled completion (temperature, top_p, seed) gives the text `generate` gives with the same seed;
  - 16 concurrent clients, 8 on each adapter, each get what the same request gets alone, and the two
    adapters' answers differ; the server batched them (/health's largest_batch);
  - stop strings, logprobs (greedy: each token's log probability is the largest of its top list);
  - errors: malformed JSON, an unknown model, a negative max_tokens, a prompt beyond the context, each
    with its status and code; a client that disconnects mid-stream is cancelled and its row freed;
    /health answers after each;
  - SIGTERM stops the server with exit code 0.
Asserts raise (exit code 1); the last line printed is a JSON summary of the figures.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import openai

from common import emit

MAX_CONTEXT = 1024

PROMPTS = [
    "The capital of France is",
    "Once upon a time, a small robot",
    "The three primary colours are",
    "def fibonacci(n):",
    "A good breakfast includes",
    "The tallest mountain in the world",
    "In 1969, the first people to walk on the Moon",
    "Water boils at",
]


def generate(cli, model, prompt, n, adapter=None, chat=False, extra=()):
    cmd = [cli, "generate", "--model", model, "--packed", "--prompt", prompt, "--max-new-tokens", str(n), "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    if chat:
        cmd.append("--chat")
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["text"]


class Server:
    def __init__(self, cli, model, a, b):
        self.proc = subprocess.Popen(
            [cli, "serve", "--model", model, "--packed", "--adapter", f"a={a}", "--adapter", f"b={b}", "--port", "0",
             "--max-context", str(MAX_CONTEXT)],
            stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "listening on http://" in line, f"serve did not start: {line!r}"
        sys.stderr.write(line)
        self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in self.proc.stderr], daemon=True).start()

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=300)

    def raw(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, json.loads(data)

    def health(self):
        status, body = self.raw("GET", "/health")
        assert status == 200 and body["status"] == "ok", (status, body)
        return body


def stream_text(chunks, chat):
    text, finish = "", None
    for c in chunks:
        if not c.choices:
            continue
        ch = c.choices[0]
        piece = (ch.delta.content if chat else ch.text) or ""
        text += piece
        finish = ch.finish_reason or finish
    return text, finish


def main():
    cli, model, adapter_a, adapter_b = sys.argv[1:5]
    summary = {}
    server = Server(cli, model, adapter_a, adapter_b)
    try:
        client = server.client()
        names = sorted(m.id for m in client.models.list().data)
        assert names == ["a", "b", "default"], names
        adapters = {"default": None, "a": adapter_a, "b": adapter_b}

        # Greedy text equals `llmtrain generate`, streamed and not, per model name.
        compared = 0
        for name, adapter in adapters.items():
            for prompt in PROMPTS[:2]:
                want = generate(cli, model, prompt, 20, adapter)
                got = client.completions.create(model=name, prompt=prompt, max_tokens=20, temperature=0)
                assert got.choices[0].text == want, (name, prompt, got.choices[0].text, want)
                assert got.usage.completion_tokens >= 1 and got.usage.prompt_tokens >= 2
                streamed, finish = stream_text(client.completions.create(
                    model=name, prompt=prompt, max_tokens=20, temperature=0, stream=True), chat=False)
                assert streamed == want and finish in ("stop", "length"), (name, prompt, streamed, want)
                compared += 2
            question = "Name a colour."
            want = generate(cli, model, question, 16, adapter, chat=True)
            got = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                                 max_tokens=16, temperature=0)
            assert got.choices[0].message.content == want, (name, got.choices[0].message.content, want)
            assert got.choices[0].message.role == "assistant"
            streamed, _ = stream_text(client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0,
                stream=True, stream_options={"include_usage": True}), chat=True)
            assert streamed == want, (name, streamed, want)
            compared += 2
        summary["equal_to_generate"] = compared

        # Sampling with a seed: the same tokens as `generate` with that seed.
        want = generate(cli, model, PROMPTS[1], 24, extra=["--temperature", "0.8", "--top-p", "0.9", "--seed", "7"])
        got = client.completions.create(model="default", prompt=PROMPTS[1], max_tokens=24, temperature=0.8,
                                        top_p=0.9, seed=7)
        assert got.choices[0].text == want, (got.choices[0].text, want)
        summary["sampled_equal"] = True

        # Stop strings: the text ends before the first stop string; finish_reason "stop".
        full = client.completions.create(model="default", prompt=PROMPTS[0], max_tokens=24, temperature=0)
        full_text = full.choices[0].text
        stop = full_text[len(full_text) // 2: len(full_text) // 2 + 3]
        cut = client.completions.create(model="default", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
        assert cut.choices[0].text == full_text[:full_text.find(stop)], (cut.choices[0].text, full_text, stop)
        assert cut.choices[0].finish_reason == "stop"
        streamed, finish = stream_text(client.completions.create(
            model="default", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=stop, stream=True), chat=False)
        assert streamed == cut.choices[0].text and finish == "stop", (streamed, finish)
        summary["stop"] = stop

        # logprobs: greedy picks the most likely token, so its log probability tops its list.
        lp = client.completions.create(model="a", prompt=PROMPTS[2], max_tokens=8, temperature=0, logprobs=3)
        l = lp.choices[0].logprobs
        assert len(l.tokens) == lp.usage.completion_tokens == len(l.token_logprobs) == len(l.top_logprobs)
        for token_lp, top in zip(l.token_logprobs, l.top_logprobs):
            assert token_lp <= 0 and len(top) >= 1 and abs(max(top.values()) - token_lp) < 1e-6, (token_lp, top)
        chat_lp = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
        entries = chat_lp.choices[0].logprobs.content
        assert len(entries) == chat_lp.usage.completion_tokens
        for e in entries:
            assert len(e.top_logprobs) == 2 and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6
        summary["logprob_tokens"] = len(l.tokens) + len(entries)

        # 16 concurrent clients, 8 per adapter: each gets what its request gets alone.
        jobs = [("a" if i % 2 == 0 else "b", PROMPTS[i // 2]) for i in range(16)]
        alone = {}
        for name, prompt in jobs:
            alone[(name, prompt)] = client.completions.create(model=name, prompt=prompt, max_tokens=16,
                                                              temperature=0).choices[0].text
        differ = sum(alone[("a", p)] != alone[("b", p)] for p in PROMPTS)
        assert differ >= 6, f"the two adapters answer alike on {8 - differ} of 8 prompts"
        # The adapters' own answers: `generate --adapter` on two prompts each.
        for name in ("a", "b"):
            for prompt in PROMPTS[2:4]:
                assert alone[(name, prompt)] == generate(cli, model, prompt, 16, adapters[name]), (name, prompt)
        before = server.health()
        results = [None] * 16
        barrier = threading.Barrier(16)

        def run(i):
            c = server.client()
            name, prompt = jobs[i]
            barrier.wait()
            if i % 4 == 0:  # a quarter of them stream
                results[i] = stream_text(c.completions.create(model=name, prompt=prompt, max_tokens=16, temperature=0,
                                                              stream=True), chat=False)[0]
            else:
                results[i] = c.completions.create(model=name, prompt=prompt, max_tokens=16,
                                                  temperature=0).choices[0].text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (name, prompt) in enumerate(jobs):
            assert results[i] == alone[(name, prompt)], (i, name, prompt, results[i], alone[(name, prompt)])
        after = server.health()
        assert after["largest_batch"] >= 8, after
        summary["concurrent_equal"] = 16
        summary["adapters_differ_on"] = differ
        summary["largest_batch"] = after["largest_batch"]

        # Errors: status, code, and the server answers /health after each.
        status, body = server.raw("POST", "/v1/completions", body=b'{"model": "default", "prompt": ')
        assert status == 400 and body["error"]["code"] == "invalid_json", (status, body)
        server.health()
        try:
            client.completions.create(model="nope", prompt="x", max_tokens=2)
            raise AssertionError("an unknown model was served")
        except openai.NotFoundError as e:
            assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
        server.health()
        try:
            client.completions.create(model="a", prompt="x", max_tokens=-5)
            raise AssertionError("a negative max_tokens was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == "max_tokens", e.body
        server.health()
        long_prompt = " ".join(["word"] * (MAX_CONTEXT + 100))
        try:
            client.completions.create(model="default", prompt=long_prompt, max_tokens=4)
            raise AssertionError("a prompt beyond the context was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["code"] == "context_length_exceeded", e.body
        try:
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": long_prompt}])
            raise AssertionError("messages beyond the context were accepted")
        except openai.BadRequestError as e:
            assert e.body["code"] == "context_length_exceeded", e.body
        server.health()

        # A client gone mid-stream: its request is cancelled and its row freed.
        before = server.health()
        sock = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"model": "b", "prompt": PROMPTS[4], "max_tokens": 900, "temperature": 0, "stream": True})
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        got = b""
        while got.count(b"data: ") < 3:
            data = sock.recv(4096)
            assert data, "the stream ended early"
            got += data
        sock.close()
        deadline = time.time() + 60
        while True:
            h = server.health()
            if h["running"] == 0 and h["cancelled"] == before["cancelled"] + 1:
                break
            assert time.time() < deadline, f"the disconnected request still runs: {h}"
            time.sleep(0.05)
        assert h["finished"] == before["finished"], h
        summary["cancelled_after_steps"] = h["steps"] - before["steps"]
        # And it still serves.
        assert client.completions.create(model="a", prompt=PROMPTS[0], max_tokens=4,
                                         temperature=0).choices[0].text == generate(cli, model, PROMPTS[0], 4,
                                                                                    adapter_a)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            code = "killed"
    assert code == 0, f"serve exited with {code} after SIGTERM"
    summary["sigterm_exit"] = code
    emit(summary)


if __name__ == "__main__":
    main()
