"""llama.cpp against reasonlab on an exported GGUF: the same greedy completions, the same
log-probabilities, and the speed of each, on the CPU.

From a checkpoint or run folder (`--model`; its task is the one it was trained on, or `--task` with
`--task-arg`s), `--prompts` held-out problems in the prompt style it was trained in (`--style`:
plain, r1 or chat, the model's chat template; plain when none is recorded) are completed greedily
(at most `--max-new-tokens`, stopping at </answer> or EOS) by reasonlab's engine, then by llama.cpp
(llama-cpp-python) on the model exported with `reasonlab export --gguf` in each of `--types`, from
the prompt token ids reasonlab's tokenizer gives. llama.cpp stops on its own at the
end-of-generation tokens the file names (EOS, and </answer> as end-of-turn when it is one token);
a </answer> of several tokens (a pretrained vocabulary) ends it here as a runner's text stop would,
so the token sequences compare as they are. Reported per type:

- prompts: llama.cpp tokenizes every prompt (special tokens, as a chat template's, parsed) and a
  text with the template tags as reasonlab does;
- greedy: the share of prompts whose llama.cpp completion is token for token reasonlab's, up to the
  first stop (llama.cpp stops at any </answer>, reasonlab's engine only after </think>: how many of
  reasonlab's completions went on past an </answer> written inside the thinking is reported too);
- log-probs: along llama.cpp's completions, reasonlab's log-probabilities of the same prefixes
  (one forward pass): how often the top token agrees, and the largest difference over each step's
  top 5 tokens (reasonlab's);
- speed: new tokens a second, one prompt at a time (prompt processing included), llama.cpp and
  reasonlab's engine on `--threads` threads; reasonlab's engine with all prompts in one batch too.
  Each prompt (the batch) is timed `--repeats` times (3) and the fastest counts: on a machine
  shared with other work that is the time least slowed by it.

The last stdout line is one JSON line of the numbers. tests/model/test_export.py's slow test runs
`compare` on a model it trains; llama.cpp is `pip install llama-cpp-python` (it builds llama.cpp
with cmake: CMAKE_ARGS="-DGGML_NATIVE=ON" for this CPU's instructions).

Run: python benchmarks/bench_export_llamacpp.py --model runs/base [--prompts 50] [--types f32 f16 q8_0]
     [--max-new-tokens 96] [--threads 2] [--repeats 3] [--task arithmetic --task-arg digits=2] [--style chat]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reasonlab.engine import SamplingParams, generate
from reasonlab.errors import UserError
from reasonlab.model import load_model
from reasonlab.model.checkpoint import load_train_config
from reasonlab.model.export import export_gguf
from reasonlab.runtime import keep_freed_memory
from reasonlab.selection import make_task
from reasonlab.template import ANSWER_CLOSE, build_prompt

TOP = 5  # log-probs compared per step
INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'


def task_prompts(
    model_path, n: int, tokenizer=None, task: str = "", task_args=(), style: str = ""
) -> list[str]:
    """`n` held-out prompts of the task (`task`, else the recorded one; `task_args` on top) in `style`
    (else the recorded style, else plain), as reasonlab's trainers build them."""
    try:
        task = make_task(task, list(task_args), str(model_path))
    except UserError as e:
        sys.exit(str(e))
    style = style or (load_train_config(model_path) or {}).get("style") or "plain"
    hf = getattr(tokenizer, "hf", tokenizer)
    return [build_prompt(p.question, style, tokenizer=hf) for p in task.problems(n, "test", 0)]


def best_of(run, repeats: int):
    """(what `run()` returns, the least of `repeats` wall times): on a shared machine the fastest
    run is the one least slowed by other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, min(times)


def reasonlab_greedy(model, tokenizer, prompts, max_new: int, repeats: int = 3):
    """(completion ids per prompt, seconds) of the engine, one prompt a call."""
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0)
    out, seconds = [], 0.0
    for prompt in prompts:
        r, t = best_of(lambda prompt=prompt: generate(model, tokenizer, [prompt], params), repeats)
        out.append(r.tokens[0, : int(r.lengths[0])].tolist())
        seconds += t
    return out, seconds


def reasonlab_batched_seconds(model, tokenizer, prompts, max_new: int, repeats: int = 3) -> float:
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0)
    return best_of(lambda: generate(model, tokenizer, prompts, params), repeats)[1]


def open_llama(path: Path, n_ctx: int, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def llama_greedy(llm, prompt_ids: list[int], max_new: int, stops=()):
    """(completion ids, log-prob rows) of llama.cpp's greedy decoding: it stops at the tokens the
    file marks as end of generation, and at the end of any token sequence in `stops` (a </answer> of
    several tokens, as a runner stopping on text does); the stop is kept, as reasonlab's engine keeps it."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    llm.eval(prompt_ids)
    ids, rows = [], []
    for _ in range(max_new):
        # the last position's logits, from llama.cpp itself (Llama.scores holds them only with logits_all)
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(last, shape=(llm.n_vocab(),)).astype(np.float64)
        rows.append(logits - np.logaddexp.reduce(logits))
        ids.append(int(logits.argmax()))
        if llama_cpp.llama_vocab_is_eog(vocab, ids[-1]) or any(ids[-len(s) :] == s for s in stops):
            break
        llm.eval([ids[-1]])
    return ids, rows


def reasonlab_logprobs(model, prompt_ids: list[int], completion: list[int]) -> np.ndarray:
    """Log-probs (steps, vocab) of each completion token's prefix, in one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion[:-1]]))[0, len(prompt_ids) - 1 :]
    return torch.log_softmax(logits.double(), -1).numpy()


def compare_logprobs(ours: np.ndarray, theirs: list) -> tuple[int, float]:
    """(steps whose top token agrees, largest |difference| over our top tokens of any step)."""
    agree, worst = 0, 0.0
    for mine, other in zip(ours, theirs):
        top = np.argsort(-mine)[:TOP]
        agree += int(mine.argmax() == other.argmax())
        worst = max(worst, float(np.abs(mine[top] - other[top]).max()))
    return agree, worst


def cut_at_stop(ids: list[int], stops: list[list[int]]) -> list[int]:
    """`ids` up to the end of the first stop sequence, kept. llama.cpp ends at the first
    end-of-generation token (</answer>, EOS) wherever it comes; reasonlab's engine ends at </answer>
    only once </think> closed the thinking (an untrained model may write </answer> inside it, then go on)."""
    for i in range(len(ids)):
        if any(s and ids[max(0, i + 1 - len(s)) : i + 1] == s for s in stops):
            return ids[: i + 1]
    return ids


def run_type(model, tokenizer, prompts, ours, gguf_path, max_new, threads, repeats: int = 3) -> dict:
    """llama.cpp on one exported file against the engine's completions `ours`."""
    llm = open_llama(gguf_path, model.max_seq_len, threads)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    tags = "<think>1+2=3</think> <answer>3</answer>"
    same_tokens = all(
        llm.tokenize(p.encode(), add_bos=True, special=True) == ids for p, ids in zip(prompts, prompt_ids)
    ) and llm.tokenize(tags.encode(), special=True) == tokenizer.encode(tags)
    stops = [[tokenizer.eos_id], tokenizer.tags[ANSWER_CLOSE]]
    text_stops = [tokenizer.tags[ANSWER_CLOSE]] if len(tokenizer.tags[ANSWER_CLOSE]) > 1 else []
    theirs, steps, agree, worst, seconds = [], 0, 0, 0.0, 0.0
    for ids in prompt_ids:
        out, t = best_of(lambda ids=ids: llama_greedy(llm, ids, max_new, text_stops), repeats)
        theirs.append(out)
        seconds += t
    for ids, (completion, rows) in zip(prompt_ids, theirs):
        a, w = compare_logprobs(reasonlab_logprobs(model, ids, completion), rows)
        steps, agree, worst = steps + len(rows), agree + a, max(worst, w)
    llm.close()
    tokens = sum(len(c) for c, _ in theirs)
    identical = sum(c == cut_at_stop(mine, stops) for (c, _), mine in zip(theirs, ours))
    return {
        "same_prompt_tokens": same_tokens,
        "identical_greedy": identical / len(prompts),
        "stop_rule_differs": sum(cut_at_stop(mine, stops) != mine for mine in ours),
        "top1_agreement": agree / steps,
        "max_top5_logprob_diff": worst,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "bytes": gguf_path.stat().st_size,
        "examples": [tokenizer.decode(c) for c, _ in theirs[:2]],
    }


def compare(
    model_path,
    types=("f32", "f16", "q8_0"),
    n_prompts: int = 50,
    max_new: int = 96,
    threads: int = 2,
    task: str = "",
    task_args=(),
    style: str = "",
    repeats: int = 3,
) -> dict:
    """Every number of the module docstring, by type; also the engine's own speeds."""
    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_path)
    model.eval()
    prompts = task_prompts(model_path, n_prompts, tokenizer, task, task_args, style)
    ours, seconds = reasonlab_greedy(model, tokenizer, prompts, max_new, repeats)
    tokens = sum(map(len, ours))
    results = {
        "prompts": len(prompts),
        "reasonlab": {
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "batched_tokens_per_s": tokens
            / reasonlab_batched_seconds(model, tokenizer, prompts, max_new, repeats),
            "examples": [tokenizer.decode(c) for c in ours[:2]],
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        for type in types:
            path = Path(folder) / f"model-{type}.gguf"
            export_gguf(model, tokenizer, path, type)
            results[type] = run_type(model, tokenizer, prompts, ours, path, max_new, threads, repeats)
    return results


def print_table(results: dict) -> None:
    ours = results["reasonlab"]
    print(
        f"reasonlab engine: {ours['tokens']} tokens, {ours['tokens_per_s']:.0f} tokens/s one prompt "
        f"at a time, {ours['batched_tokens_per_s']:.0f} tokens/s batched ({results['prompts']} prompts)"
    )
    stop = next(r["stop_rule_differs"] for t, r in results.items() if t not in ("reasonlab", "prompts"))
    print(
        f"{stop} of reasonlab's completions went on past an </answer> inside the thinking (compared up to it)"
    )
    print(
        f"{'type':6s} {'MB':>6s} {'prompts tokenized alike':>24s} {'identical greedy':>17s} "
        f"{'top-1 agrees':>13s} {'max |dlogp| top5':>17s} {'llama.cpp tok/s':>16s}"
    )
    for type, r in results.items():
        if type in ("reasonlab", "prompts"):
            continue
        print(
            f"{type:6s} {r['bytes'] / 1e6:6.2f} {str(r['same_prompt_tokens']):>24s} "
            f"{r['identical_greedy']:17.1%} {r['top1_agreement']:13.2%} "
            f"{r['max_top5_logprob_diff']:17.2e} {r['tokens_per_s']:16.0f}"
        )


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each prompt; the fastest counts")
    parser.add_argument("--task", default="", help="the task (default: the one --model was trained on)")
    parser.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable"
    )
    parser.add_argument(
        "--style",
        default="",
        choices=["", "plain", "r1", "chat"],
        help="prompt style (default: the one --model was trained in, else plain)",
    )
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit(f"needs llama.cpp's Python binding: {INSTALL}")
    results = compare(
        args.model,
        args.types,
        args.prompts,
        args.max_new_tokens,
        args.threads,
        args.task,
        args.task_arg,
        args.style,
        args.repeats,
    )
    print_table(results)
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
