"""`reasonlab serve`'s /v1/completions as evaluation harnesses use it (lm-evaluation-harness's
``local-completions``): prompts as token ids (a list, or a list of lists), ``echo`` with
``logprobs: k`` returning the prompt's log-probs in OpenAI's legacy shape (the values of one forward
pass over the ids, on the built-in model and an HF model), ``max_tokens: 0`` (the prompt alone
scored, no engine call), and the 400s around them. On a real socket on 127.0.0.1.
Run: pytest tests/serve/test_serve_harness.py"""

import httpx
import pytest
import torch
import torch.nn.functional as F

from reasonlab.model import GPTConfig, new_builtin
from reasonlab.serve import ServerThread, make_app
from tests.conftest import BigramLM
from tests.serve.test_serve import ID, TOK, USER, sse_events, writer

COMPLETIONS = "/v1/completions"
THINK_CHARS = [TOK.encode(c)[0] for c in "<think>"]  # the tag spelled one character a token


def tiny_gpt():
    return new_builtin(GPTConfig(n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=48), seed=3)


def direct(model, ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab) log-probs of one plain forward pass over `ids`, as a test computes them."""
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def post(server, body: dict) -> dict:
    reply = httpx.post(server.url + COMPLETIONS, json=body, timeout=60)
    assert reply.status_code == 200, reply.text[:400]
    return reply.json()


def refused(server, body: dict, param: str = "prompt", code=None) -> dict:
    reply = httpx.post(server.url + COMPLETIONS, json=body, timeout=60)
    assert reply.status_code == 400, (body, reply.status_code, reply.text[:300])
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (body, error)
    assert code is None or error["code"] == code, (body, error)
    return error


@pytest.fixture(scope="module")
def gpt():
    model, tok = tiny_gpt()
    with ServerThread(make_app(model, tok, model_name="g")) as s:
        yield s, model, tok


@pytest.fixture(scope="module")
def bigram():
    with ServerThread(make_app(writer(), TOK, model_name="tiny")) as s:
        yield s


def assert_scored(logprobs: dict, log_p: torch.Tensor, ids: list[int], tok, k: int) -> None:
    """`logprobs` (legacy shape, echo) is exactly `log_p` (a direct pass) on `ids`: each token's
    log-prob given the ones before (null for the first), its top k, the texts and their offsets."""
    texts = [tok.decode([i]) for i in ids]
    assert logprobs["tokens"] == texts
    assert logprobs["text_offset"] == [sum(map(len, texts[:j])) for j in range(len(ids))]
    assert logprobs["token_logprobs"] == [None] + [log_p[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
    tops = logprobs["top_logprobs"]
    assert tops[0] is None and len(tops) == len(ids)
    for j, top in enumerate(tops[1:]):
        values, index = log_p[j].topk(k)
        assert top == {tok.decode([i]): v for i, v in zip(index.tolist(), values.tolist())}, j
        assert list(top.values()) == sorted(top.values(), reverse=True)


# ---- token-id prompts --------------------------------------------------------------------------------


def test_token_id_prompts_in_both_forms_answer_as_their_text(bigram):
    text = post(bigram, {"prompt": ["q\n", "r\n"], "max_tokens": 20, "temperature": 0})
    ids = [TOK.encode("q\n"), TOK.encode("r\n")]
    as_lists = post(bigram, {"prompt": ids, "max_tokens": 20, "temperature": 0})
    as_list = post(bigram, {"prompt": ids[0], "max_tokens": 20, "temperature": 0, "n": 2})
    want = "<think>ab</think><answer>7</answer>"
    assert [c["text"] for c in text["choices"]] == [c["text"] for c in as_lists["choices"]] == [want] * 2
    assert [c["text"] for c in as_list["choices"]] == [want] * 2
    assert as_lists["usage"] == text["usage"] and as_list["usage"]["prompt_tokens"] == 2


def test_token_ids_reach_the_model_as_given_not_re_encoded(bigram):
    """The tag spelled one character a token ends in '>', which this model follows with EOS; the
    same text as a string is the one <think> token, which it follows with its thought. Decoding the
    ids and encoding again (what the engine does with a text) would have answered the thought."""
    spelled = post(bigram, {"prompt": THINK_CHARS, "max_tokens": 20, "temperature": 0, "echo": True})
    tag = post(bigram, {"prompt": [ID["<think>"]], "max_tokens": 20, "temperature": 0})
    assert spelled["choices"][0]["text"] == "<think>" and spelled["usage"]["completion_tokens"] == 1  # EOS
    assert spelled["usage"]["prompt_tokens"] == 7
    assert tag["choices"][0]["text"] == "ab</think><answer>7</answer>"
    eos_inside = post(bigram, {"prompt": [TOK.eos_id, ID["\n"]], "max_tokens": 20, "temperature": 0})
    assert (
        eos_inside["choices"][0]["text"] == "<think>ab</think><answer>7</answer>"
    )  # EOS is a token like any


@pytest.mark.parametrize(
    "prompt, code",
    [
        ([1, 2, len(TOK)], "invalid_token_id"),  # one past the vocabulary
        ([[3], [-1]], "invalid_token_id"),
        ([10**30], "invalid_token_id"),  # never an int64 overflow inside
        ([True, 2], "invalid_type"),  # a boolean is no token id
        ([[1.0, 2]], "invalid_type"),
        ([[1], []], "invalid_type"),
        ([[[1]]], "invalid_type"),
        (["q\n", [1]], "invalid_type"),
        ([[1], "q\n"], "invalid_type"),
        ([], "invalid_type"),
        ({"ids": [1]}, "invalid_type"),
    ],
)
def test_bad_token_ids_are_a_400_naming_prompt(bigram, prompt, code):
    error = refused(bigram, {"prompt": prompt, "max_tokens": 5}, code=code)
    assert len(error["message"]) < 300
    if code == "invalid_token_id":
        assert f"0-{len(TOK) - 1}" in error["message"]


def test_a_token_id_prompt_must_fit_the_model():
    model, tok = tiny_gpt()
    with ServerThread(make_app(model, tok)) as s:
        ids = tok.encode("1+2=3 ") * 8  # 48 tokens: all the model's positions
        refused(s, {"prompt": ids, "max_tokens": 1}, code="context_length_exceeded")
        refused(s, {"prompt": ids + [5], "max_tokens": 0, "echo": True}, code="context_length_exceeded")
        whole = post(
            s, {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}
        )  # scoring needs no room
        assert len(whole["choices"][0]["logprobs"]["tokens"]) == 48


# ---- echo and logprobs ----------------------------------------------------------------------------------


def test_echo_logprobs_are_one_forward_pass_over_the_ids(gpt):
    """max_tokens 0: the prompt alone, scored; equal (exactly) to a direct forward pass's
    log-softmax on the same ids, as token ids and as text, two prompts of different lengths in one
    request each scored alone (no padding); no engine call."""
    s, model, tok = gpt
    prompts = [tok.encode("12+30=42"), tok.encode("<think>7*8")]
    calls = s.app.state.batcher.calls
    reply = post(s, {"prompt": prompts, "echo": True, "logprobs": 3, "max_tokens": 0})
    for choice, ids in zip(reply["choices"], prompts):
        assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "length"
        assert_scored(choice["logprobs"], direct(model, ids), ids, tok, 3)
    text = post(s, {"prompt": "12+30=42", "echo": True, "logprobs": 3, "max_tokens": 0})
    assert text["choices"][0] == {**reply["choices"][0], "index": 0}
    assert reply["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 0,
        "total_tokens": 12,
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert s.app.state.batcher.calls == calls  # nothing was written


def test_echo_with_a_written_token_is_what_lm_eval_asks(gpt):
    """lm-eval's log-likelihood request: echo, logprobs 1, max_tokens 1, temperature 0. The prompt's
    entries are those of a pass over the prompt alone; then the written token (greedy: its
    log-prob is its place's best, lm-eval's "is greedy"); the text is prompt + completion."""
    s, model, tok = gpt
    ids = tok.encode("3+4=7")
    reply = post(
        s, {"prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0, "seed": 1234}
    )
    choice = reply["choices"][0]
    log_p = direct(model, ids)
    written = int(log_p[-1].argmax())
    assert_scored(choice["logprobs"], log_p, ids + [written], tok, 1)
    assert choice["text"] == "3+4=7" + tok.decode([written])
    top = choice["logprobs"]["top_logprobs"][-1]
    assert choice["logprobs"]["token_logprobs"][-1] == max(top.values())
    assert reply["usage"]["completion_tokens"] == 1
    plain = post(s, {"prompt": [ids], "max_tokens": 1, "temperature": 0})  # the same token without echo
    assert plain["choices"][0]["text"] == tok.decode([written])


def test_echo_scores_the_completion_cut_at_a_stop_string(bigram):
    reply = post(
        bigram,
        {
            "prompt": "q\n",
            "echo": True,
            "logprobs": 2,
            "max_tokens": 20,
            "stop": ["</think>"],
            "temperature": 0,
        },
    )
    choice = reply["choices"][0]
    assert choice["text"] == "q\n<think>ab" and choice["finish_reason"] == "stop"
    lp = choice["logprobs"]
    # Up to the token that completed the stop string, as usage counts them (its text is not returned)
    assert lp["tokens"] == ["q", "\n", "<think>", "a", "b", "</think>"]
    assert reply["usage"]["completion_tokens"] == 4
    assert lp["token_logprobs"][2:] == pytest.approx([0.0] * 4, abs=1e-6)  # the script's certain steps
    assert all(len(top) == 2 for top in lp["top_logprobs"][1:])
    without = post(bigram, {"prompt": "q\n", "logprobs": 0, "max_tokens": 20, "stop": ["</think>"]})
    assert without["choices"][0]["logprobs"]["tokens"] == [
        "<think>",
        "a",
        "b",
        "</think>",
    ]  # the completion only


def test_echo_without_logprobs_and_streamed(bigram):
    body = {"prompt": ["q\n", "r\n"], "echo": True, "max_tokens": 20, "temperature": 0}
    whole = post(bigram, body)
    assert [c["text"] for c in whole["choices"]] == [
        "q\n<think>ab</think><answer>7</answer>",
        "r\n<think>ab</think><answer>7</answer>",
    ]
    assert all(c["logprobs"] is None for c in whole["choices"])
    with httpx.stream(
        "POST", bigram.url + COMPLETIONS, json={**body, "stream": True}, timeout=30
    ) as response:
        events = list(sse_events(response))
    texts = ["", ""]
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in whole["choices"]]
    first = [c["text"] for c in events[0]["choices"]]
    assert first == ["q\n"] or first == ["r\n"]  # the prompt comes first


def test_echo_with_n_scores_each_row(gpt):
    s, model, tok = gpt
    reply = post(s, {"prompt": "5-2=", "echo": True, "logprobs": 2, "max_tokens": 0, "n": 3})
    assert len(reply["choices"]) == 3 and len({str(c["logprobs"]) for c in reply["choices"]}) == 1
    assert reply["usage"]["prompt_tokens"] == 4


def test_an_hf_model_is_scored_by_its_own_forward_pass(tmp_path):
    from reasonlab.model.checkpoint import export_hf, load_model

    built, tok = tiny_gpt()
    hf, hf_tok = load_model(export_hf(built, tok, tmp_path / "hf"))
    assert hf.kind == "hf"
    ids = tok.encode("9*9=81")
    with ServerThread(make_app(hf, hf_tok)) as s:
        reply = post(s, {"prompt": ids, "echo": True, "logprobs": 2, "max_tokens": 0})
    logprobs = reply["choices"][0]["logprobs"]
    assert_scored(logprobs, direct(hf, ids), ids, tok, 2)
    built_lp = direct(built, ids)
    assert logprobs["token_logprobs"][1:] == pytest.approx(
        [built_lp[j, ids[j + 1]].item() for j in range(5)], abs=1e-4
    )  # the same weights, another implementation


# ---- what is refused ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"prompt": "q\n", "max_tokens": 0}, "max_tokens", None),  # 0 only with echo
        (
            {"prompt": "q\n", "logprobs": 1},
            "logprobs",
            "unsupported_parameter",
        ),  # alternatives only with echo
        ({"prompt": "q\n", "logprobs": 6, "echo": True}, "logprobs", None),  # OpenAI's 0-5
        ({"prompt": "q\n", "logprobs": True, "echo": True}, "logprobs", "invalid_type"),
        ({"prompt": "q\n", "echo": "true"}, "echo", "invalid_type"),
        ({"prompt": "q\n", "echo": 1}, "echo", "invalid_type"),
        ({"prompt": "q\n", "echo": True, "logprobs": 1, "stream": True}, "logprobs", "unsupported_parameter"),
        ({"prompt": "q\n", "echo": True, "max_tokens": -1}, "max_tokens", None),
    ],
)
def test_what_echo_and_logprobs_refuse(bigram, body, param, code):
    refused(bigram, body, param, code)


def test_chat_has_no_echo_and_no_max_tokens_0(bigram):
    for body, param in [
        ({"echo": True}, "echo"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0, "echo": False}, "max_completion_tokens"),
    ]:
        reply = httpx.post(bigram.url + "/v1/chat/completions", json={"messages": USER, **body}, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, (body, reply.text)


def test_a_model_without_a_config_takes_ids_of_its_tokenizer():
    """BigramLM has no config: the tokenizer's size bounds the ids."""
    tok = TOK
    with ServerThread(make_app(BigramLM(len(tok), {}, default=tok.eos_id), tok)) as s:
        assert post(s, {"prompt": [len(tok) - 1], "max_tokens": 1})["choices"][0]["finish_reason"] == "stop"
        refused(s, {"prompt": [len(tok)], "max_tokens": 1}, code="invalid_token_id")
