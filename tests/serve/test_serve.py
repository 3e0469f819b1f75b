"""`reasonlab serve` (reasonlab.serve) on a real socket on 127.0.0.1, through the official `openai`
client: chat with reasoning_content, streaming, completions, models, thinking budgets, OpenAI error
objects, batching of concurrent requests and a bounded load test. Run: pytest tests/serve/test_serve.py"""

import asyncio
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from reasonlab.model import GPTConfig, new_builtin  # noqa: E402
from reasonlab.serve import Limits, ServerThread, make_app, split_reply  # noqa: E402
from reasonlab.template import parse_completion  # noqa: E402
from tests.conftest import BigramLM  # noqa: E402

_, TOK = new_builtin()
ID = {s: TOK.encode(s)[0] for s in ["<think>", "</think>", "<answer>", "</answer>", "\n", "a", "b", "7"]}
USER = [{"role": "user", "content": "3+4"}]


def writer(thought: str = "ab"):
    """Writes <think>{thought}</think><answer>7</answer> after a newline."""
    ids = (
        [ID["<think>"]]
        + [ID[c] for c in thought]
        + [ID["</think>"], ID["<answer>"], ID["7"], ID["</answer>"]]
    )
    script = dict(zip([ID["\n"]] + ids[:-1], ids))
    return BigramLM(len(TOK), script, default=TOK.eos_id)


def thinker():
    """Thinks forever ("aaaa…") unless the engine's cap closes its thinking; then answers 7."""
    script = {
        ID["\n"]: ID["<think>"],
        ID["<think>"]: ID["a"],
        ID["a"]: ID["a"],
        ID["</think>"]: ID["<answer>"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
    }
    return BigramLM(len(TOK), script, default=TOK.eos_id)


class Gated(BigramLM):
    """A model whose every decode step waits for `gate`: the test decides when the model is busy."""

    def decode(self, *args):
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        self.steps += 1
        return super().decode(*args)


def gated(model):
    model.__class__ = Gated
    model.gate, model.steps = threading.Event(), 0
    return model


def wait_for(server, key, value):
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()[key] != value:
        assert time.monotonic() < deadline, f"/health never showed {key} = {value}"
        time.sleep(0.01)


def first_alone_then_together(server, model, ask, first, rest):
    """`ask(first)` runs in the gated model; then `ask(r)` for each of `rest` waits; the gate opens:
    the first ran alone and the waiting ones share one generate call."""
    threads = [threading.Thread(target=ask, args=(first,))]
    threads[0].start()
    wait_for(server, "busy", True)
    threads += [threading.Thread(target=ask, args=(r,)) for r in rest]
    for t in threads[1:]:
        t.start()
    wait_for(server, "waiting_rows", len(rest))
    model.gate.set()
    for t in threads:
        t.join()
    assert server.app.state.batcher.calls == 2


def client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, **kw)


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_app(writer(), TOK, model_name="tiny")) as s:
        yield s


def test_chat_splits_thought_and_answer_with_usage(server):
    reply = client(server).chat.completions.create(
        model="tiny", messages=USER, max_tokens=20, temperature=0, n=2
    )
    raw = "<think>ab</think><answer>7</answer>"
    parsed = parse_completion(raw)
    assert len(reply.choices) == 2 and reply.object == "chat.completion"
    for choice in reply.choices:
        assert choice.message.role == "assistant" and choice.finish_reason == "stop"
        split = (choice.message.reasoning_content, choice.message.content)
        assert split == (parsed.think, parsed.answer) == ("ab", "7")
    u = reply.usage
    assert (
        u.completion_tokens == 2 * len(TOK.encode(raw))
        and u.total_tokens == u.prompt_tokens + u.completion_tokens
    )
    assert u.prompt_tokens == len(
        TOK.encode("3+4\nLet's think step by step.\n")
    )  # the prompt counted once for n=2
    assert u.completion_tokens_details.reasoning_tokens == 2 * len(TOK.encode(parsed.think))


def test_chat_streams_thought_then_answer_then_usage_then_done(server):
    c = client(server)
    stream = c.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    kinds, thought, answer, finish, usage = [], "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if getattr(delta, "reasoning_content", None):
            kinds.append("think")
            thought += delta.reasoning_content
        if delta.content:
            kinds.append("answer")
            answer += delta.content
        finish = chunk.choices[0].finish_reason or finish
    assert kinds == ["think", "think", "answer"]  # token by token, the thought first
    whole = c.chat.completions.create(model="tiny", messages=USER, max_tokens=20, temperature=0)
    assert (thought, answer) == (whole.choices[0].message.reasoning_content, whole.choices[0].message.content)
    assert finish == "stop" and usage.completion_tokens_details.reasoning_tokens == 2
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 20, "stream": True}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_completions_models_health_and_the_rationales_client(server):
    c = client(server)
    reply = c.completions.create(model="tiny", prompt=["q\n", "r\n"], max_tokens=20, temperature=0, n=2)
    assert [ch.text for ch in reply.choices] == ["<think>ab</think><answer>7</answer>"] * 4
    assert reply.usage.completion_tokens_details.reasoning_tokens == 8
    cut = c.completions.create(model="tiny", prompt="q\n", max_tokens=20, stop=["</answer>"], logprobs=0)
    assert cut.choices[0].text == "<think>ab</think><answer>7" and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == 7 and len(cut.choices[0].logprobs.token_logprobs) == 7
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="tiny", prompt="q\n", max_tokens=20, stream=True)
        if ch.choices
    )
    assert streamed == "<think>ab</think><answer>7</answer>"
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    from reasonlab.remote import RemoteGenerator

    assert RemoteGenerator(server.url).complete(["q\n"], max_tokens=20, temperature=0.0) == [
        "<think>ab</think><answer>7</answer>"
    ]


def test_chat_logprobs_and_stop_and_seed():
    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=128), seed=0)
    with ServerThread(make_app(model, tok)) as s:
        c = client(s)
        ask = dict(model="m", messages=USER, max_tokens=12, temperature=1.0, seed=7)
        first, again = c.chat.completions.create(**ask), c.chat.completions.create(**ask)
        assert first.choices[0].message == again.choices[0].message  # the same seed, the same reply
        with_lp = c.chat.completions.create(**ask, logprobs=True)
        entries = with_lp.choices[0].logprobs.content
        assert len(entries) == with_lp.usage.completion_tokens and all(e.logprob <= 0 for e in entries)
        raw = "".join(e.token for e in entries)
        assert split_reply(raw, "3+4\nLet's think step by step.\n") == (
            with_lp.choices[0].message.reasoning_content,
            with_lp.choices[0].message.content,
        )


def test_max_thinking_tokens_caps_the_thought_exactly():
    with ServerThread(make_app(thinker(), TOK)) as s:
        c = client(s)
        for n in (0, 3, 9):
            reply = c.chat.completions.create(
                model="m", messages=USER, max_tokens=40, extra_body={"max_thinking_tokens": n}
            )
            assert (
                reply.choices[0].message.reasoning_content == "a" * n
                and reply.choices[0].message.content == "7"
            )
            assert reply.usage.completion_tokens_details.reasoning_tokens == n
        low = c.chat.completions.create(model="m", messages=USER, max_tokens=40, reasoning_effort="low")
        assert low.choices[0].message.reasoning_content == "a" * 10  # low: a quarter of max_tokens
        uncapped = c.chat.completions.create(model="m", messages=USER, max_tokens=12)
        assert uncapped.choices[0].finish_reason == "length" and uncapped.choices[0].message.content == ""


def test_thinking_extensions_force_wait_per_request_in_one_call():
    """thinking_extensions = n: the model's first n attempts to close its thought become "Wait,"
    (s1's budget forcing), per row in a shared engine call."""
    comma = TOK.encode(",")[0]
    script = {
        ID["\n"]: ID["<think>"],
        ID["<think>"]: ID["a"],
        ID["a"]: ID["</think>"],
        comma: ID["a"],
        ID["</think>"]: ID["<answer>"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
    }
    with ServerThread(make_app(BigramLM(len(TOK), script, default=TOK.eos_id), TOK)) as s:
        c = client(s)
        for n in (0, 1, 3):
            reply = c.chat.completions.create(
                model="m", messages=USER, max_tokens=60, temperature=0, extra_body={"thinking_extensions": n}
            )
            assert reply.choices[0].message.reasoning_content == "a" + "Wait,a" * n
            assert reply.choices[0].message.content == "7"
        with pytest.raises(openai.BadRequestError, match="thinking_extensions"):
            c.chat.completions.create(model="m", messages=USER, extra_body={"thinking_extensions": 99})


def test_requests_with_different_budgets_share_one_generate_call():
    model = gated(thinker())
    with ServerThread(make_app(model, TOK)) as s:
        replies = {}

        def ask(budget):
            replies[budget] = client(s).chat.completions.create(
                model="m", messages=USER, max_tokens=20, extra_body={"max_thinking_tokens": budget}
            )

        first_alone_then_together(s, model, ask, 1, (2, 5, 7))
        for budget, reply in replies.items():
            assert reply.choices[0].message.reasoning_content == "a" * budget
            assert reply.usage.completion_tokens_details.reasoning_tokens == budget


class Stepped(BigramLM):
    """A model that takes one decoding step per permit the test releases (the prefill takes one)."""

    def decode(self, *args):
        assert self.permits.acquire(timeout=30), "the test never released a step"
        self.steps += 1
        return super().decode(*args)


def stepped(model):
    model.__class__ = Stepped
    model.permits, model.steps = threading.Semaphore(0), 0
    return model


def sse_events(response):
    """The JSON payloads of an SSE response, as they arrive (until [DONE])."""
    import json

    for line in response.iter_lines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return
            yield json.loads(line[6:])


def test_streaming_is_live_and_a_disconnect_frees_the_rows():
    """The thought streams while the model is still writing it: each step's token reaches the client
    before the next step runs. A client that then goes away ends its row at the next step (the
    model is not run to max_tokens for nobody)."""
    model = stepped(thinker())
    with ServerThread(make_app(model, TOK)) as s:
        body = {"messages": USER, "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=20) as response:
            events = sse_events(response)
            assert next(events)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            model.permits.release(2)  # the prefill, then the step that samples "a" after <think>
            for k in range(1, 4):
                chunk = next(events)
                assert chunk["choices"][0]["delta"] == {"reasoning_content": "a"} and model.steps == k + 1
                assert httpx.get(s.url + "/health").json()["busy"]  # the thought arrives while it is written
                model.permits.release()
        model.permits.release(1000)
        wait_for(s, "rows_dropped", 1)
        wait_for(s, "busy", False)
        assert model.steps < 20  # ended at the next step, not run on to 1000 tokens


def test_a_client_that_times_out_frees_its_rows():
    model = stepped(thinker())
    with ServerThread(make_app(model, TOK)) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                s.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 1000}, timeout=0.3
            )
        model.permits.release(1000)
        wait_for(s, "rows_dropped", 1)
        wait_for(s, "busy", False)
        assert model.steps < 50


def test_requests_with_different_max_tokens_share_one_generate_call_and_stop_strings_end_rows():
    """Rows with their own max_tokens run in one engine call, each cut at its own limit; a row
    whose text reaches a stop string ends there (the model does not run on to max_tokens)."""
    model = gated(thinker())
    with ServerThread(make_app(model, TOK)) as s:
        replies = {}

        def ask(n):
            replies[n] = client(s).completions.create(model="m", prompt="3+4\n", max_tokens=n, temperature=0)

        first_alone_then_together(s, model, ask, 4, (3, 9, 30))
        for n, reply in replies.items():
            assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == n
            assert reply.choices[0].text == "<think>" + "a" * (n - 1)
        calls, steps = s.app.state.batcher.calls, model.steps
        cut = client(s).completions.create(
            model="m", prompt="3+4\n", max_tokens=500, temperature=0, stop=["aaa"]
        )
        assert cut.choices[0].text == "<think>" and cut.choices[0].finish_reason == "stop"
        assert cut.usage.completion_tokens == 4 and s.app.state.batcher.calls == calls + 1
        assert model.steps - steps == 4  # the prefill and 3 steps: the row ended at "aaa", not at 500 tokens
        streamed = [
            c.choices[0].text
            for c in client(s).completions.create(
                model="m", prompt="3+4\n", max_tokens=500, temperature=0, stop=["aaa"], stream=True
            )
            if c.choices
        ]
        assert "".join(streamed) == "<think>"


def test_errors_are_openai_error_objects():
    limits = Limits(max_tokens=64, max_body_bytes=2000)
    with ServerThread(make_app(writer(), TOK, limits)) as s:
        c = client(s)
        cases = [
            (dict(messages=[{"role": "user", "content": "x" * 3000}]), 413, None),
            (dict(messages=USER, max_tokens=65), 400, "max_tokens"),
            (dict(messages=[]), 400, "messages"),
            (dict(messages=[{"role": "system", "content": "x"}]), 400, "messages"),
            (dict(messages=USER, tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
            (dict(messages=USER, top_logprobs=2, logprobs=True), 400, "top_logprobs"),
            (dict(messages=USER, reasoning_effort="extreme"), 400, "reasoning_effort"),
            (dict(messages=USER, temperature=-1), 400, "temperature"),
        ]
        for body, status, param in cases:
            response = httpx.post(s.url + "/v1/chat/completions", json={"model": "m", **body})
            error = response.json()["error"]
            assert response.status_code == status and set(error) == {"message", "type", "param", "code"}, body
            assert error["param"] == param, body
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            c.chat.completions.create(model="m", messages=USER, max_tokens=1000)
        bad = httpx.post(
            s.url + "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_json"
        missing = httpx.get(s.url + "/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_queue_full_is_429_and_a_disconnect_does_not_stop_the_worker():
    model = gated(writer())
    with ServerThread(make_app(model, TOK, Limits(max_queue=2))) as s:
        body = {"model": "m", "messages": USER, "max_tokens": 20}
        done = {}

        def ask(key, **extra):
            done[key] = httpx.post(s.url + "/v1/chat/completions", json={**body, **extra}, timeout=30)

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        wait_for(s, "busy", True)  # the first request is in the model, the waiting list empty
        second = threading.Thread(target=ask, args=("second",), kwargs={"n": 2})
        second.start()
        wait_for(s, "waiting_rows", 2)
        full = httpx.post(s.url + "/v1/chat/completions", json=body)
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert full.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            client(s).chat.completions.create(**body)
        model.gate.set()
        first.join()
        second.join()
        assert done["first"].status_code == done["second"].status_code == 200
        model.gate.clear()
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up while its rows are generated
            httpx.post(s.url + "/v1/chat/completions", json=body, timeout=0.2)
        model.gate.set()
        reply = client(s).chat.completions.create(**body)  # the worker went on
        assert reply.choices[0].message.content == "7"


def test_load_concurrent_clients_are_batched_and_faster():
    """32 clients x 8 requests at once against the same 256 requests one at a time."""
    model, tok = new_builtin(GPTConfig(n_layer=2, n_head=2, n_kv_head=2, d_model=64, max_seq_len=128), seed=0)
    with ServerThread(make_app(model, tok, Limits(max_batch_rows=64))) as s:
        ask = dict(model="m", messages=[{"role": "user", "content": "12+34"}], max_tokens=24, temperature=1.0)

        def well_formed(reply):
            choice = reply.choices[0]
            assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
            assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1

        sync = client(s)
        start = time.perf_counter()
        for _ in range(256):
            well_formed(sync.chat.completions.create(**ask))
        one_at_a_time = time.perf_counter() - start
        calls_before = s.app.state.batcher.calls

        async def load():
            aclient = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)

            async def user():
                return [await aclient.chat.completions.create(**ask) for _ in range(8)]

            replies = [r for batch in await asyncio.gather(*(user() for _ in range(32))) for r in batch]
            await aclient.close()
            return replies

        start = time.perf_counter()
        replies = asyncio.run(load())
        concurrent = time.perf_counter() - start
        assert len(replies) == 256
        for reply in replies:
            well_formed(reply)
        calls = s.app.state.batcher.calls - calls_before
    ratio = one_at_a_time / concurrent
    print(
        f"\nload: 256 requests one at a time {one_at_a_time:.2f} s ({256 / one_at_a_time:.0f} req/s), "
        f"32 clients x 8 {concurrent:.2f} s ({256 / concurrent:.0f} req/s) "
        f"in {calls} generate calls: {ratio:.1f}x"
    )
    assert calls < 256 and ratio > 1.0


def test_serve_without_the_extra_is_one_line(monkeypatch, capsys, tmp_path):
    import sys

    from reasonlab.cli import main

    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    for name in [m for m in sys.modules if m == "reasonlab.serve" or m.startswith("reasonlab.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["serve", "--model", str(tmp_path / "m"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'reasonlab[serve]'" in err and "starlette" in err and "Traceback" not in err


PARTS = ["<think>", "</think>", "<answer>", "</answer>", "<thi", "</ans", "a", "7", " ", "\n", "ok"]


@pytest.mark.parametrize("opened", [False, True])
def test_a_streamed_split_only_grows_to_the_final_split(opened):
    """`split_reply(final=False)` on every prefix of a reply (character by character) is a prefix,
    field by field, of the final split, for every reply: in the template or out of it, tags in any
    order (an answer, then a thought, included): nothing streamed is ever taken back."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    prompt = "q\n<think>" if opened else "q\n"

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.sampled_from(PARTS), max_size=12), st.booleans())
    def check(parts, in_template):
        text = "".join(parts)
        if in_template:
            text = text.replace("<", "")
            text = ("" if opened else "<think>") + text + "</think> <answer>7" + text[:3] + "</answer>"
        thought, answer = split_reply(text, prompt)
        if in_template:
            assert parse_completion(text, prompt).format_ok and (thought, answer) == (
                parse_completion(text, prompt).think,
                parse_completion(text, prompt).answer,
            )
        for k in range(len(text) + 1):
            t, a = split_reply(text[:k], prompt, final=False)
            assert (thought or "").startswith(t or "") and answer.startswith(a), (text, k)

    check()
