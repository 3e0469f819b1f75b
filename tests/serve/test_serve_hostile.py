"""`reasonlab serve` against a hostile client, on a real socket on 127.0.0.1: bodies json.loads
chokes on (huge integers, deep nesting), every field the protocol reads given the wrong type,
requests larger than the queue, clients that go away with rows still queued, characters the
built-in tokenizer does not know, a tiny temperature, and a model that never writes <think>
streaming its reply as it comes. A client's mistake is a 400 with OpenAI's error object naming the
parameter, never a 500. Run: pytest tests/serve/test_serve_hostile.py"""

import json
import math
import threading
import time

import httpx
import pytest

from reasonlab.serve import Batcher, Limits, ServerThread, make_app
from reasonlab.serve import batcher as batcher_module
from tests.conftest import BigramLM, random_tag_writer
from tests.serve.test_serve import TOK, USER, gated, sse_events, stepped, thinker, wait_for, writer

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
HUGE = "9" * 4000  # an integer json.loads still reads (its limit is 4300 digits), far past every range
BAD = {"array": [1], "object": {"a": 1}, "string": "x", "boolean": True, "huge integer": HUGE, "null": None}
NUMBERS = ["n", "max_tokens", "temperature", "top_p", "seed", "max_thinking_tokens", "thinking_extensions"]
UNSUPPORTED = [
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "top_logprobs",
    "best_of",
    "suffix",
    "audio",
    "modalities",
    "prediction",
]
# Each field the protocol reads, by endpoint, and which of BAD's values it takes (null: "the default").
# A completions prompt may be token ids: BAD's array, [1], is one (the id of <eos>).
FIELDS = {
    CHAT: {
        "model": {"string", "null"},
        "messages": set(),
        "max_completion_tokens": {"null"},
        "reasoning_effort": {"null"},
        "logprobs": {"boolean", "null"},
        "stream": {"boolean", "null"},
        "stream_options": {"object", "null"},
        "response_format": {"null"},
        "stop": {"string", "null"},
        "echo": {"null"},
        **{k: {"null"} for k in NUMBERS + UNSUPPORTED},
    },
    COMPLETIONS: {
        "model": {"string", "null"},
        "prompt": {"string", "array"},
        "reasoning_effort": {"null"},
        "logprobs": {"null"},
        "stream": {"boolean", "null"},
        "stream_options": {"object", "null"},
        "response_format": {"null"},
        "stop": {"string", "null"},
        "echo": {"boolean", "null"},
        **{k: {"null"} for k in NUMBERS + UNSUPPORTED},
    },
}
VALID = {
    CHAT: {"model": "m", "messages": USER, "max_tokens": 20},
    COMPLETIONS: {"model": "m", "prompt": "q\n", "max_tokens": 20},
}


def raw(body: dict) -> bytes:
    """`body` as JSON, with HUGE written as a bare integer (json.dumps cannot write one that long)."""
    return json.dumps(body).replace(json.dumps(HUGE), HUGE).encode()


def post(client: httpx.Client, path: str, data: bytes) -> httpx.Response:
    return client.post(path, content=data, headers={"content-type": "application/json"})


def assert_refused(response: httpx.Response, param, status: int = 400, what=None) -> dict:
    assert response.status_code == status, (what, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (what, error)
    assert len(error["message"]) < 400, what  # the offending value is never echoed whole
    return error


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_app(writer(), TOK, model_name="tiny")) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_bodies_json_loads_chokes_on_are_400_not_500(http, capfd):
    """A 5,000-digit integer (past Python's int-string limit: a ValueError inside json.loads), JSON
    nested 100,000 deep (a RecursionError), anywhere in the body: 400 bad_json; the server goes on."""
    deep = 100_000
    bodies = [
        b'{"prompt": "q\\n", "max_tokens": 1' + b"1" * 5000 + b"}",
        b"1" * 5000,
        b"[" * deep + b"]" * deep,
        b'{"prompt": "q\\n", "stop": ' + b"[" * deep + b"]" * deep + b"}",
        b'{"a": ' * deep + b"1" + b"}" * deep,
    ]
    for path in (CHAT, COMPLETIONS):
        for data in bodies:
            error = assert_refused(post(http, path, data), None, what=data[:40])
            assert error["code"] == "bad_json"
    # What json.loads reads but a field does not take: non-finite numbers (Python reads NaN and
    # Infinity), a float past float range (inf), nesting within its recursion limit
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        assert_refused(
            post(http, COMPLETIONS, b'{"prompt": "q\\n", "temperature": ' + number + b"}"), "temperature"
        )
    nested = b'{"prompt": "q\\n", "stop": ' + b"[" * 500 + b"]" * 500 + b"}"
    assert_refused(post(http, COMPLETIONS, nested), "stop")
    assert post(http, COMPLETIONS, raw(VALID[COMPLETIONS])).status_code == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI" not in err


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_every_field_of_the_wrong_type_is_a_400_naming_it(http, path, capfd):
    """Each field the protocol reads, given each JSON type it does not take (an array, an object, a
    string, a boolean, a 4,000-digit integer, null where it has no default): a 400 naming the field."""
    tried = 0
    for field, takes in FIELDS[path].items():
        for kind, value in BAD.items():
            if kind in takes:
                continue
            error = assert_refused(
                post(http, path, raw({**VALID[path], field: value})), field, what=(field, kind)
            )
            assert error["type"] == "invalid_request_error"
            tried += 1
    assert tried > 100  # the loop ran (about 5 bad values for each of 30 fields)
    assert post(http, path, raw(VALID[path])).status_code == 200  # the server still serves
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI" not in err


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
        ({"messages": [{"role": ["user"], "content": "3+4"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": USER, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
        (
            {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format",
        ),
        ({"messages": USER, "top_logprobs": False, "logprobs": True}, "top_logprobs"),
        ({"messages": USER, "best_of": True}, "best_of"),
        (
            {"messages": USER, "max_completion_tokens": 20, "max_tokens": "20"},
            "max_tokens",
        ),  # checked, though not used
    ],
)
def test_nested_and_look_alike_values_are_400(http, body, param):
    assert_refused(http.post(CHAT, json={"max_tokens": 20, **body}), param, what=body)


def test_bools_strings_and_objects_are_not_taken_for_what_they_look_like(http):
    """OpenAI's types, not Python's: legacy completions' `logprobs` is an integer (false == 0 turned
    log-probabilities on), `stream` a boolean ("false" streamed), `model` a string (5 was echoed),
    a text part's `text` a string (an object became its str()); `response_format` other than text
    cannot be honoured. What each does take still works."""
    body = VALID[COMPLETIONS]
    assert_refused(http.post(COMPLETIONS, json={**body, "logprobs": False}), "logprobs")
    assert http.post(COMPLETIONS, json={**body, "logprobs": None}).json()["choices"][0]["logprobs"] is None
    with_lp = http.post(COMPLETIONS, json={**body, "logprobs": 0}).json()["choices"][0]["logprobs"]
    assert len(with_lp["token_logprobs"]) == len(with_lp["tokens"]) > 0
    stream = http.post(COMPLETIONS, json={**body, "stream": "false"})
    assert_refused(stream, "stream") and "text/event-stream" not in stream.headers["content-type"]
    assert http.post(COMPLETIONS, json={**body, "stream": False}).json()["object"] == "text_completion"
    assert_refused(http.post(COMPLETIONS, json={**body, "model": 5}), "model")
    assert http.post(COMPLETIONS, json={**body, "model": "named"}).json()["model"] == "named"
    assert http.post(COMPLETIONS, json={**body, "model": None}).json()["model"] == "tiny"
    assert_refused(
        http.post(COMPLETIONS, json={**body, "response_format": {"type": "json_object"}}), "response_format"
    )
    text = http.post(CHAT, json={**VALID[CHAT], "response_format": {"type": "text"}})
    assert text.json()["choices"][0]["message"]["content"] == "7"
    parts = [{"type": "text", "text": "3+"}, {"type": "text", "text": "4"}]
    split = http.post(CHAT, json={**VALID[CHAT], "messages": [{"role": "user", "content": parts}]})
    assert split.json()["choices"][0]["message"]["content"] == "7"
    assert_refused(
        http.post(
            CHAT,
            json={
                **VALID[CHAT],
                "messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}],
            },
        ),
        "messages",
    )


# ---- the size of one request, and clients that go away (item 7) ----------------------------------


def test_a_request_above_the_queue_is_refused_before_any_work(monkeypatch):
    """2,000 prompts x n=128 against a queue of 512 rows: a 400 naming n, before a prompt is even
    tokenised and with no engine call; a request of exactly the queue is served."""
    encoded = []
    real = TOK.encode_batch
    monkeypatch.setattr(TOK, "encode_batch", lambda texts: encoded.append(len(texts)) or real(texts))
    with ServerThread(make_app(writer(), TOK, Limits(max_queue=512))) as s:
        big = httpx.post(
            s.url + COMPLETIONS, json={"prompt": ["q\n"] * 2000, "n": 128, "max_tokens": 20}, timeout=30
        )
        error = assert_refused(big, "n")
        assert error["code"] == "too_many_rows" and "256000 rows" in error["message"]
        assert_refused(httpx.post(s.url + COMPLETIONS, json={"prompt": ["q\n"] * 513}), "prompt")
        assert encoded == [] and s.app.state.batcher.calls == 0
        whole = httpx.post(
            s.url + COMPLETIONS, json={"prompt": ["q\n"] * 256, "n": 2, "max_tokens": 20}, timeout=60
        )
        assert whole.status_code == 200 and len(whole.json()["choices"]) == 512
        assert {c["text"] for c in whole.json()["choices"]} == {"<think>ab</think><answer>7</answer>"}


def test_a_client_mistake_is_a_400_even_when_the_queue_is_full():
    """A full queue answers 429 (retry later) to valid requests only: a request that can never be
    served (a character the model does not know, a prompt too long, more rows than the queue) is a
    400 at once, busy or not."""
    model = gated(writer())
    with ServerThread(make_app(model, TOK, Limits(max_queue=2))) as s:
        asks = [
            threading.Thread(
                target=httpx.post,
                args=(s.url + CHAT,),
                kwargs={"json": {"messages": USER, "max_tokens": 20, "n": n}, "timeout": 30},
            )
            for n in (1, 2)
        ]
        asks[0].start()
        wait_for(s, "busy", True)  # the first in the model, then two rows waiting: the queue is full
        asks[1].start()
        wait_for(s, "waiting_rows", 2)
        full = httpx.post(s.url + CHAT, json={"messages": USER, "max_tokens": 20})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        for body, param in [
            ({"messages": [{"role": "user", "content": "3+4 \u00e9"}]}, "messages"),
            ({"prompt": "\u4e2d\n"}, "prompt"),
            ({"messages": USER, "n": 3}, "n"),
        ]:
            path = CHAT if "messages" in body else COMPLETIONS
            assert_refused(httpx.post(s.url + path, json={"max_tokens": 20, **body}), param, what=body)
        model.gate.set()
        for t in asks:
            t.join()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_queued_chunks(monkeypatch, stream):
    """A request of 8 rows runs in engine calls of 2 rows (max_batch_rows). Its client goes away
    while the first call is under way: that call ends its rows at the next step, and the three
    calls left are never made (each used to run a prefill and a step for nobody)."""
    calls, taken = [], []
    real_generate, real_batch = batcher_module.generate, Batcher._generate
    monkeypatch.setattr(
        batcher_module,
        "generate",
        lambda model, tok, prompts, *a, **k: (
            calls.append(len(prompts)) or real_generate(model, tok, prompts, *a, **k)
        ),
    )
    monkeypatch.setattr(Batcher, "_generate", lambda self, jobs: taken.extend(jobs) or real_batch(self, jobs))
    model = stepped(thinker())  # thinks forever; each decoding step waits for a permit from the test
    with ServerThread(make_app(model, TOK, Limits(max_batch_rows=2))) as s:
        body = {"prompt": ["3+4\n"] * 4, "n": 2, "max_tokens": 1000, "temperature": 0, "stream": stream}
        if stream:
            with httpx.stream("POST", s.url + COMPLETIONS, json=body, timeout=20) as response:
                assert response.status_code == 200
                until(lambda: taken, "the job never reached the engine")
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + COMPLETIONS, json=body, timeout=0.5)
        until(lambda: taken and all(job.gone for job in taken), "the server never saw the client go")
        model.permits.release(10_000)
        wait_for(s, "rows_dropped", 8)
        wait_for(s, "busy", False)
        assert calls == [2]  # the call under way, not the three queued after it
        assert model.steps < 10
        next_one = httpx.post(
            s.url + COMPLETIONS, json={"prompt": "3+4\n", "max_tokens": 3, "temperature": 0}
        )
        assert next_one.json()["choices"][0]["text"] == "<think>aa" and calls == [2, 1]


def until(condition, message: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


# ---- a tiny temperature (item 8, the server's part) -------------------------------------------


def test_a_tiny_temperature_answers_what_greedy_answers():
    """temperature=1e-300 (OpenAI takes any temperature >= 0): a 200 whose text is greedy's, with
    finite log-probabilities (a JSON reply cannot carry -inf), chat and completions alike."""
    model = random_tag_writer(TOK, tag_boost=1.0, seed=3)  # random logits: greedy is one path among many
    with ServerThread(make_app(model, TOK)) as s, httpx.Client(base_url=s.url, timeout=30) as http:

        def text(t, **extra):
            reply = http.post(
                COMPLETIONS, json={"prompt": "3+4\n", "max_tokens": 24, "temperature": t, "seed": 1, **extra}
            )
            assert reply.status_code == 200, reply.text[:300]
            return reply.json()["choices"][0]

        greedy = text(0)["text"]
        assert text(1.0)["text"] != greedy  # sampling differs from greedy on this model
        tiny = text(1e-300, logprobs=0)
        assert tiny["text"] == greedy and all(math.isfinite(x) for x in tiny["logprobs"]["token_logprobs"])
        chat = [
            http.post(CHAT, json={"messages": USER, "max_tokens": 24, "temperature": t}).json()
            for t in (0, 1e-300)
        ]
        assert chat[0]["choices"][0]["message"] == chat[1]["choices"][0]["message"]


# ---- a model that never writes <think> streams as it writes (item 11) -----------------------------


def scripted(text: str) -> BigramLM:
    """Writes `text` (no character twice in a row's context: a bigram model) after a newline, then EOS."""
    ids = [TOK.encode(part)[0] for part in tokens_of(text)]
    return BigramLM(len(TOK), dict(zip([TOK.encode("\n")[0]] + ids[:-1], ids)), default=TOK.eos_id)


def tokens_of(text: str) -> list[str]:
    out = []
    while text:
        tag = next(
            (t for t in ("<think>", "</think>", "<answer>", "</answer>") if text.startswith(t)), text[0]
        )
        out.append(tag)
        text = text[len(tag) :]
    return out


def streamed(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + CHAT, json={**body, "stream": True}, timeout=20) as response:
        return [chunk["choices"][0]["delta"] for chunk in sse_events(response) if chunk["choices"]]


def test_a_reply_without_think_streams_as_it_is_written():
    """A stock instruct model writes no <think>: its text is content at once, a token a chunk, while
    the model is still writing (it used to wait for an <answer> that never came, then arrive whole)."""
    model = stepped(scripted("world"))
    with ServerThread(make_app(model, TOK)) as s:
        with httpx.stream(
            "POST", s.url + CHAT, json={"messages": USER, "max_tokens": 20, "stream": True}, timeout=10
        ) as response:
            events = sse_events(response)
            assert next(events)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            model.permits.release()  # the prefill, which samples "w"
            for letter in "worl":
                assert next(events)["choices"][0]["delta"] == {"content": letter}
                assert httpx.get(s.url + "/health").json()["busy"]  # the model has not finished
                model.permits.release()
            model.permits.release(100)
            rest = [e["choices"][0] for e in events if e["choices"]]
        assert [c["delta"] for c in rest] == [{"content": "d"}, {}] and rest[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "text, thought, answer, content_chunks",
    [
        ("world", None, "world", 5),  # a token a chunk
        ("ok <thin", None, "ok <thin", 3),  # "o", "k", then " <thin" once no tag can complete it (the end)
        ("<think>ab</think><answer>7</answer>", "ab", "7", 1),  # the template: as before
        (
            "ok<think>ab</think><answer>7</answer>",
            "ab",
            "ok\n\n7",
            3,
        ),  # text before <think> is kept, not dropped
        (
            "x<answer>7</answer>",
            None,
            "x7",
            2,
        ),  # an answer without a thought (the engine ends rows at </answer>)
    ],
)
def test_streamed_pieces_add_up_to_the_reply(text, thought, answer, content_chunks):
    with ServerThread(make_app(scripted(text), TOK)) as s:
        body = {"messages": USER, "max_tokens": 40, "temperature": 0}
        whole = httpx.post(s.url + CHAT, json=body, timeout=20).json()["choices"][0]["message"]
        deltas = streamed(s.url, body)
    assert (whole["reasoning_content"], whole["content"]) == (thought, answer)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (thought or "")
    assert "".join(d.get("content", "") for d in deltas) == answer
    assert sum(1 for d in deltas if d.get("content")) == content_chunks


# ---- characters the built-in tokenizer does not know (item 15) ----------------------------------


def test_a_character_the_tokenizer_does_not_know_is_a_400_naming_it(http):
    """The built-in tokenizer knows printable ASCII and newline; anything else it would read as '?'."""
    for path, body, param, bad in [
        (
            CHAT,
            {"messages": [{"role": "user", "content": "3+4 \U0001f600"}]},
            "messages",
            "'\U0001f600' (U+1F600)",
        ),
        (COMPLETIONS, {"prompt": "h\u00e9llo \u4e2d\n"}, "prompt", "'\u00e9' (U+00E9)"),
        (COMPLETIONS, {"prompt": ["ok\n", "a\u2026\n"]}, "prompt", "'\u2026' (U+2026)"),
    ]:
        error = assert_refused(http.post(path, json={"max_tokens": 20, **body}), param, what=body)
        assert bad in error["message"] and error["code"] == "unknown_character"
    question = http.post(CHAT, json={"messages": [{"role": "user", "content": "3+4?"}], "max_tokens": 20})
    assert question.json()["choices"][0]["message"]["content"] == "7"  # '?' itself is a known character


def byte_level_tokenizer():
    """A tiny byte-level BPE tokenizer (as Qwen's and Llama 3's are): it has no unknown token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from reasonlab.model.tokenizer import TokenizerAdapter

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(["3+4 = 7", "<think> </think> <answer> </answer> Wait,"], trainer)
    return TokenizerAdapter(PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>"))


def test_a_byte_level_tokenizer_takes_any_character():
    tok = byte_level_tokenizer()
    with ServerThread(make_app(BigramLM(len(tok), {}, default=tok.eos_id), tok)) as s:
        for path, body in [
            (CHAT, {"messages": [{"role": "user", "content": "3+4 \U0001f600 \u4e2d"}]}),
            (COMPLETIONS, {"prompt": "h\u00e9llo \U0001f600\n"}),
        ]:
            reply = httpx.post(s.url + path, json={"max_tokens": 5, **body}, timeout=20)
            assert reply.status_code == 200, reply.text[:300]


def test_the_server_still_answers_a_valid_request_in_parallel_with_hostile_ones(server):
    """Hostile requests from several threads at once, with valid ones between them: every valid
    one is answered correctly, every hostile one refused with a 400."""
    statuses, lock = [], threading.Lock()

    def hammer():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(10):
                for data, ok in [
                    (b"[" * 50_000, False),
                    (raw({**VALID[CHAT], "n": HUGE}), False),
                    (raw(VALID[CHAT]), True),
                ]:
                    r = post(c, CHAT, data)
                    good = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "7"
                    with lock:
                        statuses.append(good if ok else r.status_code == 400)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 120 and all(statuses)
