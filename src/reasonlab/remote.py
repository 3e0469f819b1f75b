"""The OpenAI-compatible completions client, and the error objects the server (`serve`) answers with.

- `RemoteGenerator(base_url)`: a client of ``POST /v1/completions`` (``reasonlab serve``, vLLM, any
  OpenAI-compatible server), what ``rationales --teacher/--judge http://…`` sample through: a
  timeout per request, retries with exponential back-off on connection errors, timeouts and 5xx
  answers, and a clear error once they run out. Only the standard library (urllib).
- `BadRequest`, `error_body`: a refusal and OpenAI's error object, ``{"error": {"message", "type",
  "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class BadRequest(ValueError):
    """A request the server refuses: HTTP `status`, an OpenAI-style error naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
