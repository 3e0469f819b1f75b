"""The OpenAI-compatible path, against a real HTTP server (`reasonlab.serve`) on 127.0.0.1 started
by the test: completions, retries with back-off, clear failures; the LLM judge (local and over HTTP) on a task
without gold answers; samples persisted as they arrive. Run: pytest tests/test_remote.py"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reasonlab.model import new_builtin
from reasonlab.remote import RemoteError, RemoteGenerator
from reasonlab.serve import ServerThread, make_app
from reasonlab.tasks import Problem, Task, register_task
from reasonlab.train.rationales import Judge, RationalesConfig, sample_rationales
from tests.conftest import BigramLM

_, TOK = new_builtin()
ID = {
    s: TOK.encode(s)[0]
    for s in ["<think>", "</think>", "<answer>", "</answer>", "\n", ":", "a", "7", "9", "2"]
}


def writer():
    """Writes <think>a</think><answer>7</answer> after a newline; after ':' (a judge prompt) it
    writes the score its `score` token says."""
    script = {
        ID["\n"]: ID["<think>"],
        ID["<think>"]: ID["a"],
        ID["a"]: ID["</think>"],
        ID["</think>"]: ID["<answer>"],
        ID["<answer>"]: ID["7"],
        ID["7"]: ID["</answer>"],
    }
    return BigramLM(len(TOK), script, default=ID["\n"])


def scorer(score: str):
    return BigramLM(len(TOK), {ID[":"]: ID[score]}, default=TOK.eos_id)


def start(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def serving(model, tok=TOK) -> ServerThread:
    """`reasonlab serve`'s app for `model` on a free port, on a thread."""
    return ServerThread(make_app(model, tok))


@pytest.fixture
def endpoint():
    with serving(writer()) as server:
        yield server.url


def test_completions_over_http(endpoint):
    client = RemoteGenerator(endpoint)
    texts = client.complete(["q1\n", "q2\n"], max_tokens=10, temperature=0.0, n=2)
    assert texts == ["<think>a</think><answer>7</answer>"] * 4
    with pytest.raises(RemoteError, match="404"):  # a client error is not retried
        RemoteGenerator(endpoint + "/nope", retries=3).complete(["x"])


def test_retries_with_back_off_then_success_or_a_clear_error():
    calls = {"n": 0}

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            calls["n"] += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            if calls["n"] <= 2:
                self.send_response(503)
                self.end_headers()
                return
            body = json.dumps({"choices": [{"index": 0, "text": "ok"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    url = start(server)
    try:
        assert RemoteGenerator(url, retries=3).complete(["x"]) == ["ok"]
        assert calls["n"] == 3
        calls["n"] = 0
        with pytest.raises(RemoteError, match="after 2 attempts.*503"):
            RemoteGenerator(url, retries=1).complete(["x"])
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(RemoteError, match="after 2 attempts"):  # nobody listens there any more
        RemoteGenerator(url, retries=1, timeout=2).complete(["x"])


@register_task("open_question")
class OpenQuestion(Task):
    """No gold answer: only a judge can say what is good."""

    def sample(self, rng):
        return Problem(f"describe {rng.randint(0, 10**6)}", "")

    def verify(self, predicted, gold):
        return False


@pytest.mark.parametrize("score,kept", [("9", True), ("2", False)])
def test_judge_filters_a_task_without_gold_locally_and_over_http(score, kept):
    task = OpenQuestion()
    problems = task.problems(5, "train")
    cfg = RationalesConfig(samples=2, temperature=0.0, max_new_tokens=12)
    judge = Judge(scorer(score), TOK, "Score how well the response answers.", threshold=7)
    local, drawn = sample_rationales(writer(), TOK, task, problems, cfg, seed=0, judge=judge)
    assert drawn == 10 and (len(local) == 5) is kept  # one survivor per question after dedup, or none
    with serving(scorer(score)) as server:
        remote_judge = Judge(
            RemoteGenerator(server.url), TOK, "Score how well the response answers.", threshold=7
        )
        over_http, _ = sample_rationales(writer(), TOK, task, problems, cfg, seed=0, judge=remote_judge)
    assert over_http == local
    with pytest.raises(ValueError, match="rubric"):
        Judge(scorer(score), TOK, " ")


def test_samples_persist_as_they_arrive_and_a_rerun_reuses_them(tmp_path, endpoint):
    from reasonlab.tasks import get_task

    task = get_task("arithmetic", op="+", digits=1)
    problems = task.problems(40, seed=0)
    cfg = RationalesConfig(samples=2, temperature=0.0, max_new_tokens=12)
    cache = tmp_path / "samples.jsonl"
    first, drawn = sample_rationales(RemoteGenerator(endpoint), TOK, task, problems, cfg, seed=0, cache=cache)
    assert cache.is_file() and drawn == 80

    # Nothing listens on port 9: any request would fail, so everything must come from the cache.
    again, _ = sample_rationales(
        RemoteGenerator("http://127.0.0.1:9", retries=0), TOK, task, problems, cfg, seed=0, cache=cache
    )
    assert again == first and {r["question"] for r in first} == {
        p.question for p in problems if p.answer == "7"
    }


def test_serve_command_feeds_rationales_as_teacher_and_judge(tmp_path):
    """`reasonlab serve` in its own process; `reasonlab rationales --teacher URL --judge URL`."""
    import subprocess
    import sys

    from reasonlab.model import GPTConfig, save_checkpoint

    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=128), seed=0)
    save_checkpoint(tmp_path / "m", model, tok)
    server = subprocess.Popen(
        [sys.executable, "-m", "reasonlab", "serve", "--model", str(tmp_path / "m"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().split()[-1].rsplit("/v1/", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        from reasonlab.cli import main

        assert (
            main(
                [
                    "rationales",
                    "--model",
                    str(tmp_path / "m"),
                    "--task",
                    "arithmetic",
                    "--task-arg",
                    "digits=1",
                    "--teacher",
                    url,
                    "--judge",
                    url,
                    "--judge-rubric",
                    "Is it right?",
                    "--rounds",
                    "1",
                    "--problems",
                    "8",
                    "--samples",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--steps",
                    "1",
                    "--eval-problems",
                    "4",
                    "--out",
                    str(tmp_path / "r"),
                ]
            )
            == 0
        )
        record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
        assert record["samples"] == 16 and (tmp_path / "r" / "round1_samples.jsonl").is_file()
        assert (
            main(["rationales", "--model", str(tmp_path / "m"), "--task", "arithmetic", "--judge", url]) == 2
        )
    finally:
        server.kill()
        server.wait()


def test_cli_names_an_unreachable_teacher_in_one_line(tmp_path, capsys, monkeypatch):
    """A teacher endpoint nobody serves: after the retries, one line and exit code 1, no traceback."""
    from reasonlab.cli import main
    from reasonlab.model import save_checkpoint

    monkeypatch.setattr(
        "openai._base_client.time.sleep", lambda seconds: None
    )  # the back-off, not waited here
    model, tok = new_builtin(seed=0)
    save_checkpoint(tmp_path / "base", model, tok)
    assert (
        main(
            [
                "rationales",
                "--model",
                str(tmp_path / "base"),
                "--task",
                "chain",
                "--teacher",
                "http://127.0.0.1:9",
                "--rounds",
                "1",
                "--problems",
                "2",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "error: http://127.0.0.1:9/v1/completions failed after 5 attempts" in err and "Traceback" not in err
    )
    assert main(["rationales", "--model", str(tmp_path / "base"), "--task", "chain", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_serve_refuses_a_bad_or_taken_port_in_one_line(tmp_path, capsys):
    import socket

    from reasonlab.cli import main

    # Checked before the model loads: the model folder here does not even exist.
    assert main(["serve", "--model", str(tmp_path / "none"), "--port", "99999"]) == 2
    assert "--port must be 0-65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "none"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def _post(url: str, body: bytes | None, headers: dict | None = None, path: str = "/v1/completions"):
    """(status, parsed JSON body) of a raw POST: headers exactly as given (no Content-Length added)."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    conn.putrequest("POST", path)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    if body:
        conn.send(body)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 3]}, "prompt"),
        ({"prompt": "q\n", "n": 0}, "n"),
        ({"prompt": "q\n", "n": "2"}, "n"),
        ({"prompt": "q\n", "seed": "abc"}, "seed"),
        ({"prompt": "q\n", "temperature": float("nan")}, "temperature"),
        ({"prompt": "q\n", "temperature": -1}, "temperature"),
        ({"prompt": "q\n", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "q\n", "top_p": 0}, "top_p"),
        ({"prompt": "9" * 200}, "prompt"),  # longer than the model's 128 positions
        ([1, 2], None),
    ],
)
def test_server_answers_a_bad_request_with_an_openai_error(body, param, capsys):
    from reasonlab.model import GPTConfig

    model, tok = new_builtin(GPTConfig(n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=128))
    server = serving(model, tok)
    url = server.url
    try:
        data = json.dumps(body).encode()
        status, answer = _post(
            url, data, {"Content-Type": "application/json", "Content-Length": str(len(data))}
        )
        assert status == 400 and set(answer["error"]) == {"message", "type", "param", "code"}
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
        status, answer = _post(url, b"{not json", {"Content-Length": "9"})
        assert status == 400 and "not valid JSON" in answer["error"]["message"]
        status, answer = _post(url, None, {})  # no body
        assert status == 400 and "not valid JSON" in answer["error"]["message"]
        status, answer = _post(url, b"{}", {"Content-Length": "2"}, path="/v1/chat")
        assert status == 404 and answer["error"]["code"] == "not_found"
        ok = json.dumps({"prompt": "1+1\n", "max_tokens": 3, "n": 2, "seed": 1}).encode()
        status, answer = _post(url, ok, {"Content-Length": str(len(ok))})
        assert status == 200 and len(answer["choices"]) == 2  # the server still serves
    finally:
        server.close()
    assert "Traceback" not in capsys.readouterr().err


def test_server_answers_an_internal_failure_with_500(capsys):
    class Broken(BigramLM):
        def forward(self, *args, **kwargs):
            raise RuntimeError("boom")

        decode = forward

    with serving(Broken(len(TOK), {}, default=0)) as server:
        body = json.dumps({"prompt": "q\n", "max_tokens": 2}).encode()
        status, answer = _post(server.url, body, {"Content-Length": str(len(body))})
    assert status == 500 and answer["error"]["type"] == "server_error"
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
