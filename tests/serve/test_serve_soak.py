"""A soak of `reasonlab serve`: the real server (uvicorn in its own process, 127.0.0.1, a free port,
a tiny built-in model built here) under 64 concurrent clients for a fixed time (5 minutes; set
REASONLAB_SOAK_SECONDS for another), mixing valid requests (streamed and not), clients that go away
mid-request, and malformed requests (the classes of tests/serve/test_serve_hostile.py). It asserts: no
500, every valid request answered correctly (the reply a seeded request gets alone, streamed or not;
or 429 when the queue is full), every malformed one refused with a 400, the server still answers
after; it prints and writes (soak.json in the test's tmp dir) the requests served, p50/p99 latency
and the server's peak RSS. Run: REASONLAB_SOAK_SECONDS=30 pytest -m slow tests/serve/test_serve_soak.py -s"""

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

CLIENTS = 64
MAX_QUEUE = 96  # small enough that 64 clients fill it at times: 429s happen and are retried later
SERVER = f"""
import sys, torch
from reasonlab.model import GPTConfig, new_builtin
from reasonlab.serve import Limits, bind, make_app, run_server
torch.set_num_threads(1)  # the clients share the machine (2 cores where this was written)
model, tok = new_builtin(GPTConfig(n_layer=2, n_head=2, n_kv_head=2, d_model=64, max_seq_len=128), seed=0)
sock = bind("127.0.0.1", 0)
limits = Limits(max_batch_rows=32, max_queue={MAX_QUEUE}, max_tokens=64)
app = make_app(model.eval(), tok, limits, model_name="soak")
run_server(app, sock, on_start=lambda: print(sock.getsockname()[1], flush=True))
"""
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# The valid requests: each is seeded, so its reply is the same in any batch (the engine's row seeds)
VALID = [
    (COMPLETIONS, {"prompt": "12+34\n", "max_tokens": 24, "temperature": 0}),
    (COMPLETIONS, {"prompt": ["5*6\n", "7-2\n"], "max_tokens": 16, "temperature": 0.8, "seed": 3}),
    (COMPLETIONS, {"prompt": "9+9\n", "max_tokens": 20, "temperature": 1.0, "seed": 11, "n": 3}),
    (CHAT, {"messages": [{"role": "user", "content": "3+4"}], "max_tokens": 24, "temperature": 0}),
    (
        CHAT,
        {
            "messages": [{"role": "user", "content": "8*8"}],
            "max_tokens": 32,
            "temperature": 0.7,
            "seed": 5,
            "max_thinking_tokens": 8,
        },
    ),
    (
        CHAT,
        {
            "messages": [{"role": "user", "content": "1+1"}],
            "max_tokens": 16,
            "temperature": 1.0,
            "seed": 2,
            "n": 2,
            "reasoning_effort": "low",
        },
    ),
]
HUGE = "9" * 4000
# Malformed bodies (raw bytes) and the param each 400 names
MALFORMED = [
    (COMPLETIONS, b'{"prompt": "q\\n", "max_tokens": 1' + b"1" * 5000 + b"}", None),
    (CHAT, b"[" * 100_000 + b"]" * 100_000, None),
    (COMPLETIONS, b"{not json", None),
    (
        CHAT,
        json.dumps({"messages": [{"role": "user", "content": "3+4"}], "reasoning_effort": ["low"]}).encode(),
        "reasoning_effort",
    ),
    (
        CHAT,
        json.dumps({"messages": [{"role": "user", "content": "3+4"}], "reasoning_effort": {}}).encode(),
        "reasoning_effort",
    ),
    (COMPLETIONS, b'{"prompt": "q\\n", "n": ' + HUGE.encode() + b"}", "n"),
    (COMPLETIONS, b'{"prompt": "q\\n", "temperature": ' + HUGE.encode() + b"}", "temperature"),
    (COMPLETIONS, json.dumps({"prompt": "q\n", "logprobs": False}).encode(), "logprobs"),
    (COMPLETIONS, json.dumps({"prompt": "q\n", "stream": "false"}).encode(), "stream"),
    (COMPLETIONS, json.dumps({"prompt": "q\n", "model": 5}).encode(), "model"),
    (
        CHAT,
        json.dumps(
            {"messages": [{"role": "user", "content": "3+4"}], "response_format": {"type": "json_object"}}
        ).encode(),
        "response_format",
    ),
    (
        CHAT,
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]}
        ).encode(),
        "messages",
    ),
    (CHAT, json.dumps({"messages": [{"role": "user", "content": "3+4 \U0001f600"}]}).encode(), "messages"),
    (COMPLETIONS, json.dumps({"prompt": ["q\n"] * 200, "n": 64}).encode(), "n"),  # rows above the queue
    (COMPLETIONS, json.dumps({"prompt": "q\n", "max_tokens": 10_000}).encode(), "max_tokens"),
]


def start_server(tmp_path):
    err = open(tmp_path / "server.err", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=err, text=True)
    port = proc.stdout.readline().strip()
    assert port.isdigit(), f"the server did not start: {(tmp_path / 'server.err').read_text()[-2000:]}"
    return proc, f"http://127.0.0.1:{port}"


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (Linux: VmHWM), else its resident set now."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except OSError:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20


def fields(path: str, reply: dict) -> list:
    """What a reply must repeat exactly: each choice's text (chat: thought and answer) and finish reason."""
    if path == CHAT:
        return [
            (c["message"]["reasoning_content"] or None, c["message"]["content"], c["finish_reason"])
            for c in reply["choices"]
        ]
    return [(c["text"], c["finish_reason"]) for c in reply["choices"]]


async def streamed_fields(response, path: str, n: int) -> list | None:
    """The same fields assembled from a stream's chunks (None when it did not end with [DONE])."""
    parts = [["", "", None] for _ in range(n)]
    async for line in response.aiter_lines():
        if line == "data: [DONE]":
            if path == CHAT:
                return [(t or None, a, f) for t, a, f in parts]
            return [(t, f) for t, _, f in parts]
        if not line.startswith("data: "):
            continue
        for c in json.loads(line[6:])["choices"]:
            part = parts[c["index"]]
            delta = c.get("delta", {})
            part[0] += c.get("text", "") if path == COMPLETIONS else delta.get("reasoning_content", "")
            part[1] += delta.get("content", "") or ""
            part[2] = c["finish_reason"] or part[2]
    return None


class Tally:
    def __init__(self):
        self.latencies, self.counts, self.failures = [], {}, []

    def count(self, what: str):
        self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what: str):
        if len(self.failures) < 20:
            self.failures.append(what)


async def one_client(url: str, k: int, end: float, expected: dict, tally: Tally) -> None:
    rng = random.Random(k)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < end:
            roll = rng.random()
            try:
                if roll < 0.55:
                    await valid(client, rng, expected, tally, stream=rng.random() < 0.4)
                elif roll < 0.7:
                    await disconnect(client, rng, tally)
                else:
                    await malformed(client, rng, tally)
            except httpx.TransportError as e:  # the server closed a connection on a valid client
                tally.fail(f"transport error: {type(e).__name__}: {e}")


async def valid(client, rng, expected, tally, stream: bool) -> None:
    i = rng.randrange(len(VALID))
    path, body = VALID[i]
    start = time.monotonic()
    if stream:
        async with client.stream("POST", path, json={**body, "stream": True}) as response:
            got = (
                await streamed_fields(response, path, len(expected[i]))
                if response.status_code == 200
                else None
            )
            status = response.status_code
    else:
        response = await client.post(path, json=body)
        status = response.status_code
        got = fields(path, response.json()) if status == 200 else None
    if status == 429:
        tally.count("429")
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        return
    if status != 200 or got != expected[i]:
        tally.fail(f"valid request {i} (stream={stream}): {status}, {got} != {expected[i]}")
        return
    tally.latencies.append(time.monotonic() - start)
    tally.count("served streamed" if stream else "served")


async def disconnect(client, rng, tally) -> None:
    """A valid request whose client goes away: after the first chunk, or after a short wait."""
    path, body = VALID[rng.randrange(len(VALID))]
    if rng.random() < 0.5:
        async with client.stream("POST", path, json={**body, "stream": True}) as response:
            async for _ in response.aiter_lines():
                break  # leaving the block closes the connection mid-stream
    else:
        try:
            response = await client.post(
                path, json=body, timeout=httpx.Timeout(60, read=rng.uniform(0.01, 0.2))
            )
            if response.status_code not in (200, 429):
                tally.fail(f"a request that finished before its client left: {response.status_code}")
        except httpx.ReadTimeout:
            pass
    tally.count("disconnects")


async def malformed(client, rng, tally) -> None:
    path, data, param = MALFORMED[rng.randrange(len(MALFORMED))]
    response = await client.post(path, content=data, headers={"content-type": "application/json"})
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):  # not OpenAI's error object (uvicorn's plain-text 500)
        error = {}
    if response.status_code != 400 or error.get("param", "?") != param:
        tally.fail(f"malformed {data[:60]!r}: {response.status_code} {response.text[:200]}")
    tally.count("refused")


async def soak(url: str, seconds: float, expected: dict) -> Tally:
    tally = Tally()
    end = time.monotonic() + seconds
    clients = [one_client(url, k, end, expected, tally) for k in range(CLIENTS)]
    await asyncio.wait_for(
        asyncio.gather(*clients), timeout=seconds + 180
    )  # each request has its own timeout too
    return tally


def test_soak(tmp_path):
    seconds = float(os.environ.get("REASONLAB_SOAK_SECONDS", 300))
    proc, url = start_server(tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            # each valid request alone: the reply it must get in any batch, streamed or not
            expected = {
                i: fields(path, http.post(path, json=body).json()) for i, (path, body) in enumerate(VALID)
            }
            start = time.monotonic()
            tally = asyncio.run(soak(url, seconds, expected))
            elapsed = time.monotonic() - start
            after = [
                http.post(path, json=body) for path, body in VALID
            ]  # the server still answers, correctly
            assert [fields(p, r.json()) for (p, _), r in zip(VALID, after)] == list(expected.values())
            health = http.get("/health").json()
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still busy with rows nobody waits for: no graceful end
            proc.kill()
            proc.wait()
    lat = sorted(tally.latencies)
    served = tally.counts.get("served", 0) + tally.counts.get("served streamed", 0)
    report = {
        "seconds": round(elapsed, 1),
        "clients": CLIENTS,
        "requests_served": served,
        "served_per_s": round(served / elapsed, 1),
        **tally.counts,
        "p50_latency_s": round(statistics.median(lat), 3) if lat else None,
        "p99_latency_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
        "server_peak_rss_mib": round(rss, 1),
        "generate_calls": health["generate_calls"],
        "rows_done": health["rows_done"],
        "rows_dropped": health["rows_dropped"],
    }
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=1))
    print(f"\nsoak: {json.dumps(report)}\n(written to {tmp_path / 'soak.json'})")
    err = (tmp_path / "server.err").read_text()
    assert not tally.failures, tally.failures
    assert "Traceback" not in err and "Exception in ASGI" not in err, err[-3000:]
    assert served > 0 and tally.counts.get("refused", 0) > 0 and tally.counts.get("disconnects", 0) > 0
    assert health["waiting_rows"] == 0
