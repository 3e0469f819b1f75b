"""The OpenAI-compatible completions client, and the error objects the server (`serve`) answers with.

- `RemoteGenerator(base_url)`: a client of ``POST /v1/completions`` (``reasonlab serve``, vLLM, any
  OpenAI-compatible server) through the official `openai` package, what ``rationales
  --teacher/--judge http://…`` sample through: a timeout per request, retries with exponential
  back-off on connection errors, timeouts, 408/409/429 and 5xx answers (the client's own), and one
  clear `RemoteError` once they run out; any other 4xx at once, not retried.
- `BadRequest`, `error_body`: a refusal and OpenAI's error object, ``{"error": {"message", "type",
  "param", "code"}}``.
"""

from __future__ import annotations

import os

RETRIED = (408, 409, 429)  # the 4xx answers the openai client retries (as it does every 5xx)


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
    """Client for an OpenAI-compatible ``/v1/completions`` endpoint (ours, vLLM, …). The API key is
    `api_key`, else ``OPENAI_API_KEY``, else none (local servers ignore it)."""

    def __init__(
        self,
        base_url: str,
        model: str = "reasonlab",
        timeout: float = 60.0,
        retries: int = 4,
        api_key: str | None = None,
    ):
        from openai import OpenAI

        base = base_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        self.url, self.model, self.retries = base + "/completions", model, retries
        self.client = OpenAI(
            base_url=base,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
            timeout=timeout,
            max_retries=retries,
        )

    def complete(
        self,
        prompts: list[str],
        *,
        max_tokens: int = 128,
        temperature: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[str]:
        """Completions for each prompt, `n` per prompt, in prompt-major order."""
        import openai

        attempts = f"failed after {self.retries + 1} attempts"
        try:
            reply = self.client.completions.create(
                model=self.model,
                prompt=prompts,
                max_tokens=max_tokens,
                temperature=temperature,
                n=n,
                seed=seed,
            )
        except openai.APIStatusError as e:
            if (
                e.status_code < 500 and e.status_code not in RETRIED
            ):  # our request is wrong: retrying will not help
                raise RemoteError(f"{self.url} answered {e.status_code}: {str(e.message)[:200]}") from None
            raise RemoteError(f"{self.url} {attempts} (last: HTTP {e.status_code})") from None
        except openai.APIConnectionError as e:  # APITimeoutError too
            raise RemoteError(f"{self.url} {attempts} (last: {e.__cause__ or e})") from None
        if len(reply.choices) != len(prompts) * n:
            raise RemoteError(
                f"{self.url} answered {len(reply.choices)} choices for {len(prompts)} prompts x {n}"
            )
        return [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
