"""OpenAI-compatible completions over HTTP: a minimal server for any reasonlab model, and a client.

- `serve(model, tokenizer, host, port)`: ``POST /v1/completions`` with ``prompt`` (a string or a
  list), ``max_tokens``, ``temperature``, ``n``, ``seed``; answers ``{"choices": [{"index",
  "text", "finish_reason"}]}``. Enough for a teacher or a judge on another process or machine
  (`reasonlab serve`); for production serving use vLLM, which speaks the same protocol. A bad
  request gets HTTP 400 (404 for an unknown path) and OpenAI's error object, ``{"error": {"message",
  "type": "invalid_request_error", "param", "code"}}``; a failure inside, 500 and ``"server_error"``.
- `RemoteGenerator(base_url)`: the client: a timeout per request, retries with exponential
  back-off on connection errors, timeouts and 5xx answers, and a clear error once they run out.

Only the standard library is used (http.server, urllib): no new dependency.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .engine import SamplingParams, generate


class BadRequest(ValueError):
    """A request the server refuses: HTTP `status`, an OpenAI-style error naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _number(request: dict, key: str, default, kind, low, high=math.inf):
    """`request[key]` (or `default`) as a `kind` number in [low, high], else BadRequest naming `key`."""
    value = request.get(key, default)
    if value is None and default is None:
        return None
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        shown = "an integer" if kind is int else "a number"
        raise BadRequest(f"'{key}' must be {shown} in [{low}, {high}], got {value!r}", key)
    return kind(value)


def parse_request(request) -> tuple[list[str], int, SamplingParams]:
    """(prompts, n, sampling params) of a /v1/completions body, checked; BadRequest otherwise."""
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = request.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise BadRequest("'prompt' must be a non-empty string or a non-empty list of them", "prompt")
    n = _number(request, "n", 1, int, 1, MAX_N)
    try:
        params = SamplingParams(max_new_tokens=_number(request, "max_tokens", 128, int, 1),
                                temperature=_number(request, "temperature", 1.0, float, 0),
                                top_p=_number(request, "top_p", 1.0, float, 0, 1),
                                seed=_number(request, "seed", None, int, 0, 2**63 - 1))
    except ValueError as e:  # BadRequest is one too
        raise e if isinstance(e, BadRequest) else BadRequest(str(e)) from None
    return prompts, n, params


MAX_N = 128  # completions per prompt at most (as OpenAI's API)


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server (not started) answering /v1/completions with `model`. One request at a time
    reaches the model (a lock): batching happens inside a request (`prompt` lists, `n`). A bad
    request (not JSON, a wrong field, a prompt longer than the model's positions, an unknown path)
    gets a 400 or 404 and an OpenAI-style error object; a failure inside, a 500 and one."""
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

        def _body(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                raise BadRequest("a Content-Length header (the body's size in bytes) is required", code="no_length")
            try:
                return json.loads(self.rfile.read(int(length)))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRequest(f"the body is not valid JSON: {e}", code="bad_json") from None

        def _complete(self) -> dict:
            if self.path.rstrip("/") != "/v1/completions":
                raise BadRequest(f"unknown path {self.path}: POST /v1/completions", status=404, code="not_found")
            prompts, n, params = parse_request(self._body())
            with lock:
                try:
                    rollout = generate(model, tokenizer, [p for p in prompts for _ in range(n)], params)
                except ValueError as e:  # the engine's checks of its input: a prompt too long for the model
                    raise BadRequest(str(e), "prompt") from None
            choices = [{"index": i, "text": text, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(rollout.texts, rollout.finish_reason))]
            return {"object": "text_completion", "choices": choices}

        def do_POST(self):  # noqa: N802 (http.server's naming)
            try:
                return self._send(200, self._complete())
            except BadRequest as e:
                return self._send(e.status, error_body(str(e), param=e.param, code=e.code))
            except Exception as e:  # noqa: BLE001 - any failure is answered, never a dropped connection
                print(f"serve: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                return self._send(500, error_body(f"internal error: {type(e).__name__}", "server_error"))

        def do_GET(self):  # noqa: N802
            self._send(404, error_body(f"unknown path {self.path}: POST /v1/completions", code="not_found"))

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
