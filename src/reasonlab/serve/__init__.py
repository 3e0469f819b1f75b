"""`reasonlab serve`: an OpenAI-compatible server for any reasonlab model, with batching.

Endpoints: ``POST /v1/chat/completions`` (the reply split into ``message.reasoning_content``, the
thought, and ``message.content``, the answer, as vLLM's reasoning parsers and DeepSeek's API do),
``POST /v1/completions`` (raw text, what `remote.RemoteGenerator` reads; prompts as text or token
ids, and ``echo`` with ``logprobs`` to score a prompt, as lm-evaluation-harness asks), ``GET /v1/models``,
``GET /health`` and ``GET /`` (a chat page). docs/serve.md has the parameters, the thinking budgets
and measured numbers. `protocol` checks requests and shapes replies, `batcher` turns waiting
requests into engine calls, `intake` reads a request's body and prompts and submits its rows,
`routes` answers the generating routes (`stream`: as server-sent events), `app` is the Starlette
app and `server` runs it with uvicorn.

Why Starlette + uvicorn, not FastAPI: every body is checked by hand here, because a refusal must be
OpenAI's error object naming the parameter (FastAPI's pydantic models answer 422 and their own
shape, which would have to be overridden everywhere), and streaming is a plain async generator.
What FastAPI would add (pydantic models, OpenAPI pages) this server does not use, so the smaller
stack it is built on (Starlette; uvicorn runs both) is enough.

Batching. A request is checked, its prompts built and tokenised on the event loop, and its rows
(prompt x ``n``) put in a waiting list as one `Job` with a future. One worker task takes what is
waiting each time the model is free: the oldest job's sampling key (temperature and top_p: the
engine takes those once per `generate` call) and every waiting job with the same key, oldest first,
up to `Limits.max_batch_rows` rows (a larger job runs alone, in calls of that many rows); jobs with
other keys wait for a later turn (oldest key first). Thinking budgets, max_tokens and seeds differ
per row inside a batch: the engine takes `think_budget` and `max_new_tokens` as per-row lists and
`row_seeds` (a row's samples depend only on its own seed, never on the rows it shares a batch
with). The `generate` call runs in a thread (`asyncio.to_thread`), so the loop keeps accepting
requests; rows leave the batch as they finish, and each job's future gets its rows. A request
of more rows than `Limits.max_queue`: 400 before its prompts are even tokenised (it could never be
taken); one whose rows would take the waiting rows past it: 429 (retry later).

Every step. The engine calls the batcher after each decoding step (`generate`'s ``on_step``) with
the tokens just written. A streamed job gets them in its queue at once; a row whose client went
away (a closed stream, or a request that timed out: ASGI's ``http.disconnect``) or whose text
reached one of its stop strings is ended there, so no step is spent on text nobody reads; a job
whose client went away leaves the waiting list, and the engine calls its rows had left to run (a
job above max_batch_rows) are not made.

Streaming is live: each step's token becomes one SSE chunk per row, the thought as
``delta.reasoning_content``, then the answer as ``delta.content`` (`protocol.split_reply` with
``final=False`` holds back a half-written tag or stop string, so the pieces add up to the
non-streamed reply), then a chunk with the finish reason, a ``usage`` chunk when
``stream_options.include_usage``, and ``data: [DONE]``. A reply with no ``<think>`` (a stock
instruct model) is ``delta.content`` as it is written.

Scoring. A completions request with ``echo`` and ``logprobs: k`` gets back its prompt's tokens
before the completion's, each with its log-probability given the tokens before it and its top k
alternatives (OpenAI's legacy shape), from one forward pass of the model over the prompt and the
completion (`scoring.score`, on the worker thread after the rows are written); ``max_tokens: 0``
scores the prompt alone and makes no engine call. A prompt given as token ids reaches the model as
those ids (the engine would re-encode a decoded text differently: `batcher._GivenIds`).

Every body field the server reads is checked for its JSON type and range (`protocol`): a client's
mistake is a 400 naming the parameter, never a 500, including bodies `json.loads` itself fails on
(an integer past Python's int-string limit, nesting past its recursion limit) and characters the
built-in tokenizer does not know (it would read them as '?').
"""

from .app import make_app
from .batcher import Batcher, Job, apply_stop
from .protocol import EFFORT_SHARE, Limits, Row, Sampling, ServeError, parse_sampling, split_reply, usage
from .server import ServerThread, bind, model_name_of, run_server

__all__ = [
    "EFFORT_SHARE",
    "Batcher",
    "Job",
    "Limits",
    "Row",
    "Sampling",
    "ServeError",
    "ServerThread",
    "apply_stop",
    "bind",
    "make_app",
    "model_name_of",
    "parse_sampling",
    "run_server",
    "split_reply",
    "usage",
]
