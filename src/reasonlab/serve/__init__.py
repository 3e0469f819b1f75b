"""`reasonlab serve`: an OpenAI-compatible server for any reasonlab model, with batching.

Endpoints: ``POST /v1/chat/completions`` (the reply split into ``message.reasoning_content``, the
thought, and ``message.content``, the answer, as vLLM's reasoning parsers and DeepSeek's API do),
``POST /v1/completions`` (raw text, what `remote.RemoteGenerator` reads), ``GET /v1/models`` and
``GET /health``. docs/serve.md has the parameters, the thinking budgets and measured numbers.

Why Starlette + uvicorn, not FastAPI: every body is checked by hand here, because a refusal must be
OpenAI's error object naming the parameter (FastAPI's pydantic models answer 422 and their own
shape, which would have to be overridden everywhere), and streaming is a plain async generator.
What FastAPI would add (pydantic models, OpenAPI pages) this server does not use, so the smaller
stack it is built on (Starlette; uvicorn runs both) is enough.

Batching. A request is checked, its prompts built and tokenised on the event loop, and its rows
(prompt x ``n``) put in a waiting list as one `Job` with a future. One worker task takes what is
waiting each time the model is free: the oldest job's sampling key (temperature, top_p, max_tokens:
the engine takes those once per `generate` call) and every waiting job with the same key, oldest
first, up to `Limits.max_batch_rows` rows (a larger job runs alone, in calls of that many rows); jobs
with other keys wait for a later turn (oldest key first). Thinking budgets and seeds differ per row
inside a batch: the engine takes `think_budget` as a per-row list and `row_seeds` (a row's samples
depend only on its own seed, never on the rows it shares a batch with). The `generate` call runs
in a thread (`asyncio.to_thread`), so the loop keeps accepting requests; each job's future gets its
rows. A client that disconnects leaves a future nobody awaits: its rows are dropped and the worker
goes on. A request whose rows would take the waiting rows past `Limits.max_queue`: 429 (alone, a
request is always taken).

Streaming. The engine returns whole rollouts (it has no per-step hook), so a streamed reply starts
when its batch has finished: the thought is sent as ``delta.reasoning_content`` one token's text at
a time, then the answer as ``delta.content``, then a chunk with the finish reason, a ``usage``
chunk when ``stream_options.include_usage``, and ``data: [DONE]``.
"""

from .app import ServerThread, bind, make_app, model_name_of, run_server
from .batcher import Batcher, Job, apply_stop
from .protocol import EFFORT_SHARE, Limits, Row, Sampling, ServeError, parse_sampling, split_reply, usage

__all__ = ["EFFORT_SHARE", "Batcher", "Job", "Limits", "Row", "Sampling", "ServeError", "ServerThread", "apply_stop",
           "bind", "make_app", "model_name_of", "parse_sampling", "run_server", "split_reply", "usage"]
