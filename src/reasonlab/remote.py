"""OpenAI-compatible completions over HTTP: a minimal server for any reasonlab model, and a client.

- `serve(model, tokenizer, host, port)`: ``POST /v1/completions`` with ``prompt`` (a string or a
  list), ``max_tokens``, ``temperature``, ``n``, ``seed``; answers ``{"choices": [{"index",
  "text", "finish_reason"}]}``. Enough for a teacher or a judge on another process or machine
  (`reasonlab serve`); for production serving use vLLM, which speaks the same protocol.
- `RemoteGenerator(base_url)`: the client: a timeout per request, retries with exponential
  back-off on connection errors, timeouts and 5xx answers, and a clear error once they run out.

Only the standard library is used (http.server, urllib): no new dependency.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .engine import SamplingParams, generate


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server (not started) answering /v1/completions with `model`. One request at a time
    reaches the model (a lock): batching happens inside a request (`prompt` lists, `n`)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the caller decides what to print
            pass

        def _send(self, code: int, payload: dict):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/v1/completions":
                return self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
                n = int(request.get("n", 1))
                params = SamplingParams(max_new_tokens=int(request.get("max_tokens", 128)),
                                        temperature=float(request.get("temperature", 1.0)),
                                        top_p=float(request.get("top_p", 1.0)), seed=request.get("seed"))
            except (KeyError, ValueError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            with lock:
                rollout = generate(model, tokenizer, [p for p in prompts for _ in range(n)], params)
            choices = [{"index": i, "text": text, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(rollout.texts, rollout.finish_reason))]
            return self._send(200, {"object": "text_completion", "choices": choices})

    return ThreadingHTTPServer((host, port), Handler)


def serve(model, tokenizer, host: str = "127.0.0.1", port: int = 8000) -> None:
    server = make_server(model, tokenizer, host, port)
    print(f"serving on http://{host}:{server.server_address[1]}/v1/completions", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class RemoteError(RuntimeError):
    pass


class RemoteGenerator:
    """Client for an OpenAI-compatible ``/v1/completions`` endpoint (ours, vLLM, …)."""

    def __init__(self, base_url: str, model: str = "reasonlab", timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.5, api_key: str | None = None):
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/completions"
        self.model, self.timeout, self.retries, self.backoff, self.api_key = model, timeout, retries, backoff, api_key

    def complete(self, prompts: list[str], *, max_tokens: int = 128, temperature: float = 1.0, n: int = 1,
                 seed: int | None = None) -> list[str]:
        """Completions for each prompt, `n` per prompt, in prompt-major order."""
        body = json.dumps({"model": self.model, "prompt": prompts, "max_tokens": max_tokens,
                           "temperature": temperature, "n": n, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay, last = self.backoff, None
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    choices = json.loads(response.read())["choices"]
                return [c["text"] for c in sorted(choices, key=lambda c: c["index"])]
            except urllib.error.HTTPError as e:
                if e.code < 500:  # our request is wrong: retrying will not help
                    raise RemoteError(f"{self.url} answered {e.code}: {e.read()[:200]!r}") from None
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise RemoteError(f"{self.url} failed after {self.retries + 1} attempts (last: {last})")
