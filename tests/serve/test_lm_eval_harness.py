"""lm-evaluation-harness against `reasonlab serve` (slow): the real server in its own process on
127.0.0.1 (a free port) serving a tiny built-in model trained here for a few hundred steps on
single-digit sums, and lm-eval's ``local-completions`` model (its Python API, `simple_evaluate`)
running two tasks defined here on a local JSONL file: one ``generate_until`` (exact_match) and one
``multiple_choice`` (acc, from log-likelihoods: echo + logprobs requests of token ids). Its scores
must be reasonlab's own on the same items: the greedy completions of reasonlab's engine, and the
argmax of each choice's summed log-prob computed here with one forward pass of the same weights.

lm-eval reads the tokenizer from the checkpoint folder (a reasonlab checkpoint is a Hugging Face
folder: ``tokenizer_backend=huggingface``), so it sends token ids, as it does against vLLM.
Run: pytest -m slow tests/serve/test_lm_eval_harness.py -s (needs pip install 'reasonlab[eval-harness]')"""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import GPTConfig, load_model, new_builtin, save_checkpoint

NEEDED = ("lm_eval", "aiohttp", "tenacity", "requests")  # lm-eval and its [api] extra
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in NEEDED),
        reason="lm-evaluation-harness is not installed: pip install 'reasonlab[eval-harness]' (lm-eval[api])",
    ),
]

POSITIONS = 32
SUMS = [(a, b) for a in range(10) for b in range(10)]
ITEMS = SUMS[::4]  # 25 of them
GEN, MC = "reasonlab_sums_gen", "reasonlab_sums_mc"


def train_tiny(steps: int = 200):
    """The built-in model (2 layers, d_model 64) trained on "a+b=c\\n" lines, next-token loss."""
    model, tok = new_builtin(
        GPTConfig(n_layer=2, n_head=2, n_kv_head=2, d_model=64, max_seq_len=POSITIONS), seed=0
    )
    ids = tok.encode_batch([f"{a}+{b}={a + b}\n" for a, b in SUMS])
    x = torch.full((len(ids), max(map(len, ids))), tok.pad_id)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
    real = x[:, 1:] != tok.pad_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    draw = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(ids), (64,), generator=draw)
        logits = model(x[batch])[:, :-1]
        loss = F.cross_entropy(logits.transpose(1, 2), x[batch, 1:], reduction="none")
        loss = (loss * real[batch]).sum() / real[batch].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tok


def choices(a: int, b: int, k: int) -> tuple[list[str], int]:
    """Four answers to a+b (one and two digits), the right one at place k % 4."""
    right = a + b
    wrong = [right + 1, abs(right - 2), right + 10]
    options = wrong[: k % 4] + [right] + wrong[k % 4 :]
    return [str(o) for o in options], k % 4


def write_tasks(folder) -> None:
    """The data (JSONL) and the two task YAMLs lm-eval's TaskManager reads from `folder`."""
    import yaml

    data = folder / "sums.jsonl"
    with open(data, "w") as f:
        for k, (a, b) in enumerate(ITEMS):
            options, label = choices(a, b, k)
            f.write(
                json.dumps({"question": f"{a}+{b}", "answer": str(a + b), "choices": options, "label": label})
                + "\n"
            )
    common = {
        "dataset_path": "json",
        "test_split": "test",
        "doc_to_text": "{{question}}=",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "cache")},
    }
    tasks = {
        GEN: {
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        },
        # target_delimiter "": the choice follows "a+b=" directly, as the model was trained
        MC: {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
    }
    for name, config in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **config}))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, checkpoint folder): `reasonlab serve` in its own process on the trained model."""
    root = tmp_path_factory.mktemp("lm_eval")
    model, tok = train_tiny()
    folder = save_checkpoint(root / "sums", model, tok)
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reasonlab",
            "serve",
            "--model",
            str(folder),
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving NAME (...) on http://127.0.0.1:PORT/v1/"
        assert line.startswith("serving"), (line, (root / "server.log").read_text()[-2000:])
        yield line.split()[-1].rsplit("/v1/", 1)[0], folder
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    errors = (root / "server.log").read_text()
    assert "Traceback" not in errors and "internal error" not in errors, errors[-2000:]


def summed_logprob(model, tok, context: str, continuation: str) -> float:
    """The continuation's log-prob given the context, from one forward pass over both (lm-eval's
    split: the context's tokens, then the rest of the whole's), summed in order as lm-eval sums."""
    ids, n = tok.encode(context + continuation), len(tok.encode(context))
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    return sum(logp[j, ids[j + 1]].item() for j in range(n - 1, len(ids) - 1))


def our_scores(folder) -> dict:
    """reasonlab's own evaluation of the items, on the checkpoint's weights."""
    model, tok = load_model(folder)
    model.eval()
    lls = [
        [summed_logprob(model, tok, f"{a}+{b}=", c) for c in choices(a, b, k)[0]]
        for k, (a, b) in enumerate(ITEMS)
    ]
    picks = [max(range(4), key=lambda c: (ll[c], -c)) for ll in lls]  # the first of equal ones, as np.argmax
    texts = []
    for a, b in ITEMS:  # one prompt a call, as lm-eval sends them (batch_size 1): no padding
        rollout = generate(model, tok, [f"{a}+{b}="], SamplingParams(max_new_tokens=4, temperature=0))
        texts.append(rollout.texts[0].split("\n")[0])  # cut before the stop string, as the server does
    return {
        "lls": lls,
        "acc": sum(p == choices(a, b, k)[1] for k, ((a, b), p) in enumerate(zip(ITEMS, picks))) / len(ITEMS),
        "texts": texts,
        "exact_match": sum(t == str(a + b) for t, (a, b) in zip(texts, ITEMS)) / len(ITEMS),
    }


def test_lm_eval_scores_equal_reasonlabs_own(served, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url, folder = served
    write_tasks(tmp_path)
    args = {
        "base_url": url + "/v1/completions",
        "model": str(folder),
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "max_length": POSITIONS,
        "num_concurrent": 1,
        "max_retries": 1,
    }
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=[GEN, MC],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    ours = our_scores(folder)
    theirs = {"acc": out["results"][MC]["acc,none"], "exact_match": out["results"][GEN]["exact_match,none"]}
    mc = sorted(out["samples"][MC], key=lambda s: s["doc_id"])
    their_lls = [[resp[0][0] for resp in sample["resps"]] for sample in mc]
    gap = max(abs(m - t) for mine, got in zip(ours["lls"], their_lls) for m, t in zip(mine, got))
    print(
        f"\nlm-eval: acc {theirs['acc']}, exact_match {theirs['exact_match']}; reasonlab: acc {ours['acc']}, "
        f"exact_match {ours['exact_match']} ({len(ITEMS)} items; log-likelihoods differ by {gap:.3g} at most)"
    )
    for item, (mine, got) in enumerate(zip(ours["lls"], their_lls)):
        assert got == pytest.approx(mine, abs=1e-5), item
    gen = sorted(out["samples"][GEN], key=lambda s: s["doc_id"])
    assert [sample["resps"][0][0] for sample in gen] == ours["texts"]
    assert theirs == {"acc": ours["acc"], "exact_match": ours["exact_match"]}
    assert (
        0 < ours["exact_match"] and 0 < ours["acc"]
    )  # the model learnt something: the comparison has content
