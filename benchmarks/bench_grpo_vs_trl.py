"""GRPO steps/s: reasonlab's trainer against TRL's `GRPOTrainer`, side by side in one process.

Same work for both: a ~1M-parameter Llama-shaped model (the built-in GPT, 4 layers, d=128,
character vocabulary; TRL gets the same weights exported as a `LlamaForCausalLM`), the `chain`
task with 4 variables, the same reward (`reasonlab.rewards.reasoning_reward`: format 2 + correct 1),
16 prompts x 8 completions per step, at most 64 new tokens, temperature 1, beta = 0, one update per
batch, token-mean (DAPO) loss, one torch thread each. TRL runs with gradient checkpointing off (its
faster setting here). Prints seconds per step for each, the ratio, and the training MFU against
this machine's measured fp32 matmul peak; the last line is one JSON line with a `ratio` key.

With `--start CKPT` it also races both from that checkpoint (the demo-sized model at 40-60%; see
`bench_grpo_target.py --keep-start`) with the same settings (16 x 8, lr 2e-4, token-mean loss, no
dynamic sampling: TRL has none), evaluating held-out accuracy (200 problems, greedy, our
evaluator for both) every ~15 s of training time, evaluation time excluded, until 95% or
`--seconds` of training: the wall time each needs to reach 95%, or its accuracy when time ran out.

Needs the `bench` extra (TRL): pip install -e '.[bench]'
Run: python benchmarks/bench_grpo_vs_trl.py [--steps 6] [--start CKPT --seconds 300]
"""

import argparse
import json
import statistics
import tempfile
import time

import torch

from reasonlab.model import GPTConfig, export_hf, new_builtin
from reasonlab.rewards import reasoning_reward
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt

P, G, NEW = 16, 8, 64


def fp32_peak() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    return 2 * 1024**3 * 20 / (time.perf_counter() - start)


def step_flops(params: int, prompt_tokens: float, completion_tokens: float) -> float:
    """Generation (forward over prompt + completion) plus training (forward and backward: 3x)."""
    tokens = P * G * (prompt_tokens + completion_tokens)
    return 2 * params * tokens + 6 * params * tokens


class StepTimes:
    """A `train_grpo` log that keeps each step's generation and training seconds and mean
    completion length; `summary()`: the median seconds a step (the first left out), the mean
    completion length, and the median (generation, training) split of a step."""

    def __init__(self):
        self.gen, self.train, self.lengths = [], [], []

    def __call__(self, m: dict) -> None:
        if "time/generate_s" in m:
            self.gen.append(m["time/generate_s"])
            self.train.append(m["time/train_s"])
            self.lengths.append(m["completions/mean_length"])

    def summary(self) -> tuple[float, float, tuple[float, float]]:
        steps_s = [a + b for a, b in zip(self.gen, self.train)]
        return (
            statistics.median(steps_s[1:]),
            statistics.mean(self.lengths),
            (statistics.median(self.gen[1:]), statistics.median(self.train[1:])),
        )


def run_ours(model, tok, task, steps: int) -> tuple[float, float, tuple[float, float]]:
    """`StepTimes.summary()` of our run."""
    # A random model earns 0 everywhere: every group is flat. TRL still runs the forward and backward
    # on them, so ours does too here (skip_flat_groups off): the same work; nor does it stop such a
    # run (no_format_patience 0).
    cfg = GRPOConfig(
        steps=steps,
        prompts_per_step=P,
        group_size=G,
        max_new_tokens=NEW,
        beta=0.0,
        lr=1e-4,
        eval_every=0,
        loss_agg="token_mean",
        seed=0,
        skip_flat_groups=False,
        no_format_patience=0,
    )
    times = StepTimes()
    train_grpo(model, tok, task, cfg, log=times)
    return times.summary()


def run_trl(folder: str, tok, task, steps: int) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    problems = task.problems(P * steps * 2, "train", seed=0)
    data = Dataset.from_list([{"prompt": build_prompt(p.question), "answer": p.answer} for p in problems])

    def reward(completions, answer, **_):
        return reasoning_reward(completions, answer, task=task)

    with tempfile.TemporaryDirectory() as out:
        args = TRLConfig(
            output_dir=out,
            per_device_train_batch_size=P * G,
            num_generations=G,
            max_completion_length=NEW,
            beta=0.0,
            learning_rate=1e-4,
            temperature=1.0,
            max_steps=steps,
            logging_steps=1,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
            save_strategy="no",
            loss_type="dapo",
            bf16=False,
            seed=0,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(folder),
            reward_funcs=[reward],
            args=args,
            train_dataset=data,
            processing_class=tok.hf,
        )
        steps_s = timed_train(trainer)
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    return statistics.median(steps_s[1:]), statistics.mean(h["completions/mean_length"] for h in logs)


def timed_train(trainer) -> list[float]:
    """Run a TRL trainer's `train()`; the seconds each step took."""
    from transformers import TrainerCallback

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    start = time.perf_counter()
    trainer.train()
    return [b - a for a, b in zip([start] + stamps[:-1], stamps)]


RACE_LR, EVAL_EVERY_S, TARGET = 2e-4, 15.0, 0.95


class Race:
    """Training clock (evaluations excluded) and held-out accuracy every EVAL_EVERY_S of it."""

    def __init__(self, name, tok, task, seconds):
        from reasonlab.engine import SamplingParams
        from reasonlab.evaluate import evaluate_problems

        self.name, self.seconds, self.clock, self.next_eval, self.curve = name, seconds, 0.0, 0.0, []
        held_out = task.problems(200, "test", seed=1)
        greedy = SamplingParams(temperature=0.0, max_new_tokens=96)
        self.measure = lambda m: evaluate_problems(m, tok, task, held_out, params=greedy)["accuracy"]

    def tick(self, train_seconds: float, model) -> bool:
        """Add a step's training time; evaluate when due. True when the race is over."""
        self.clock += train_seconds
        if self.clock >= self.next_eval or self.clock >= self.seconds:  # due, or the last word
            acc = self.measure(model)
            self.curve.append((round(self.clock, 1), acc))
            print(f"{self.name:<10} {self.clock:7.1f}s  held-out {acc:.1%}", flush=True)
            self.next_eval += EVAL_EVERY_S
            if acc >= TARGET:
                return True
        return self.clock >= self.seconds

    def result(self) -> dict:
        reached = next((t for t, acc in self.curve if acc >= TARGET), None)
        return {"seconds_to_95": reached, "last": self.curve[-1]}


def race_ours(start: str, task, seconds: float) -> dict:
    from reasonlab.model import load_model

    model, tok = load_model(start)
    race = Race("reasonlab", tok, task, seconds)
    race.tick(0.0, model)
    cfg = GRPOConfig(
        steps=100_000,
        prompts_per_step=P,
        group_size=G,
        max_new_tokens=96,
        beta=0.0,
        lr=RACE_LR,
        eval_every=0,
        loss_agg="token_mean",
        seed=0,
    )

    class Done(Exception):
        pass

    def log(m):
        if "time/generate_s" in m and race.tick(m["time/generate_s"] + m["time/train_s"], model):
            raise Done

    try:
        train_grpo(model, tok, task, cfg, log=log)
    except Done:
        pass
    return race.result()


def race_trl(start: str, task, seconds: float) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from reasonlab.model import load_model
    from reasonlab.model.hf import HFCausalLM

    _, tok = load_model(start)
    race = Race("TRL", tok, task, seconds)
    problems = task.problems(20000, "train", seed=0)
    data = Dataset.from_list([{"prompt": build_prompt(p.question), "answer": p.answer} for p in problems])

    def reward(completions, answer, **_):
        return reasoning_reward(completions, answer, task=task)

    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as out:
        model, _ = load_model(start)
        export_hf(model, tok, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder)
        race.tick(0.0, HFCausalLM(hf).eval())
        args = TRLConfig(
            output_dir=out,
            per_device_train_batch_size=P * G,
            num_generations=G,
            max_completion_length=96,
            beta=0.0,
            learning_rate=RACE_LR,
            lr_scheduler_type="constant",
            temperature=1.0,
            max_steps=100_000,
            logging_steps=10**9,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
            save_strategy="no",
            loss_type="dapo",
            bf16=False,
            seed=0,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=hf, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok.hf
        )
        last = [time.perf_counter()]

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                spent = time.perf_counter() - last[0]
                if race.tick(spent, HFCausalLM(model).eval()):
                    control.should_training_stop = True
                model.train()
                last[0] = time.perf_counter()  # the evaluation is not training time

        trainer.add_callback(Clock())
        trainer.train()
    return race.result()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--start", default="", help="also race both from this checkpoint to 95%% held-out")
    parser.add_argument(
        "--seconds", type=float, default=300, help="training seconds each may take in the race"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    if args.start:
        task = get_task("chain", length=4)
        ours, trl = race_ours(args.start, task, args.seconds), race_trl(args.start, task, args.seconds)
        print(json.dumps({"bench": "grpo_race_to_95", "ours": ours, "trl": trl, "lr": RACE_LR}))
    task = get_task("chain", length=4)
    model, tok = new_builtin(
        GPTConfig(n_layer=4, n_head=4, n_kv_head=4, d_model=128, max_seq_len=256), seed=0
    )
    params = model.num_params()
    prompt_tokens = statistics.mean(
        len(tok.encode(build_prompt(p.question))) for p in task.problems(64, seed=0)
    )
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, tok, folder)
        trl_s, trl_len = run_trl(folder, tok, task, args.steps)
    ours_s, ours_len, (ours_gen, ours_train) = run_ours(model, tok, task, args.steps)
    peak = fp32_peak()
    mfu = lambda s, length: step_flops(params, prompt_tokens, length) / s / peak  # noqa: E731
    print(
        f"model {params:,} params; {P} prompts x {G} completions, <= {NEW} new tokens; one thread; "
        f"fp32 peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"{'trainer':<12}{'s/step':>8}{'steps/s':>9}{'mean completion':>17}{'MFU':>8}")
    print(f"{'reasonlab':<12}{ours_s:>8.3f}{1 / ours_s:>9.2f}{ours_len:>17.1f}{mfu(ours_s, ours_len):>8.1%}")
    print(f"{'TRL':<12}{trl_s:>8.3f}{1 / trl_s:>9.2f}{trl_len:>17.1f}{mfu(trl_s, trl_len):>8.1%}")
    print(f"reasonlab's step: generation {ours_gen:.3f} s, training {ours_train:.3f} s (medians)")
    print(
        json.dumps(
            {
                "bench": "grpo_vs_trl",
                "params": params,
                "ours_s_per_step": round(ours_s, 3),
                "trl_s_per_step": round(trl_s, 3),
                "ratio": round(trl_s / ours_s, 2),
                "ours_generate_s": round(ours_gen, 3),
                "ours_train_s": round(ours_train, 3),
                "ours_mfu": round(mfu(ours_s, ours_len), 4),
                "trl_mfu": round(mfu(trl_s, trl_len), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
