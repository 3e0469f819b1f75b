"""GRPO steps/s on a real pretrained model: reasonlab's trainer against TRL's `GRPOTrainer`, side
by side in one process.

Same work for both: the model `--model` (a Hugging Face folder, a reasonlab run folder or a
`.gguf` file; SmolLM2-135M-Instruct for the README's table), two-digit sums through the model's
chat template, the same reward (`reasonlab.rewards.reasoning_reward`: format 2 + correct 1),
8 prompts x 8 completions a step, at most 128 new tokens, temperature 1, beta = 0, one update a
batch, token-mean (DAPO) loss, lr 1e-5, the same torch threads, the same dtype (`--dtype`: fp32
weights for the headline ratio; bfloat16 loads both models' weights in bf16). An instruct model
that never writes the template earns 0 on every sample, so every group is flat: reasonlab trains
on them anyway here (`skip_flat_groups` off, no stop for a missing format), as TRL does, so both
do the same forward and backward. Both train in micro-batches of 16 rows, accumulating to one
update (a whole 64-row batch's 49,152-way logits outgrow 24 GB); TRL runs with gradient
checkpointing off.

Prints seconds a step for each (the median after the first), the ratio, and the training MFU:
`2N` FLOPs a prompt or sampled token plus `6N` a trained token, over every row's prompt and
completion (N: the parameters a token multiplies by), against this machine's matmul peak in the
dtype used, and our step's split into generation and training. Its floor: the work our step
computes (each prompt once, each sampled token: 2N to generate, 6N to train) at that peak; TRL's
step over it is the highest ratio this machine allows. The last line is one JSON line with a
`ratio` key (TRL s/step over ours).

Needs the `bench` extra (TRL): pip install -e '.[bench]'
Run: python benchmarks/bench_real_grpo_vs_trl.py --model PATH [--steps 3] [--threads 2] [--dtype float32]
                                                 [--autocast]
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_grpo_vs_trl import StepTimes, timed_train
from bench_real_generate import DTYPES, matmul_params, matmul_peak

from reasonlab.model import load_model
from reasonlab.model.checkpoint import model_folder
from reasonlab.rewards import reasoning_reward
from reasonlab.rl import GRPOConfig, train_grpo
from reasonlab.runtime import keep_freed_memory
from reasonlab.tasks import get_task
from reasonlab.template import build_prompt

P, G, NEW, LR, MICRO = 8, 8, 128, 1e-5, 16


def hf_folder(spec: str) -> Path:
    """The Hugging Face folder `spec` names (a .gguf file: its converted cache folder)."""
    if spec.lower().endswith(".gguf"):
        from reasonlab.model.gguf import gguf_folder

        return gguf_folder(spec)
    return model_folder(spec)


def run_ours(
    spec: str, task, steps: int, dtype: str, bf16_autocast: bool = False, rollout_dtype: str = "auto"
):
    """`StepTimes.summary()` of our run: the median seconds a step (the first left out), the mean
    completion length, and the median (generation, training) seconds of a step."""
    model, tok = load_model(spec, DTYPES[dtype])
    cfg = GRPOConfig(
        steps=steps,
        prompts_per_step=P,
        group_size=G,
        max_new_tokens=NEW,
        beta=0.0,
        lr=LR,
        eval_every=0,
        loss_agg="token_mean",
        seed=0,
        style="chat",
        skip_flat_groups=False,
        no_format_patience=0,
        dtype=dtype,
        micro_batch_size=MICRO,
        autocast="on" if bf16_autocast else "auto",
        rollout_dtype=rollout_dtype,
    )
    times = StepTimes()
    train_grpo(model, tok, task, cfg, log=times)
    return times.summary()


def run_trl(folder: Path, task, steps: int, dtype: str, bf16_autocast: bool = False) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    problems = task.problems(P * steps * 2, "train", seed=0)
    data = Dataset.from_list(
        [
            {"prompt": build_prompt(p.question, style="chat", tokenizer=tok), "answer": p.answer}
            for p in problems
        ]
    )

    def reward(completions, answer, **_):
        return reasoning_reward(completions, answer, task=task)

    with tempfile.TemporaryDirectory() as out:
        args = TRLConfig(
            output_dir=out,
            per_device_train_batch_size=MICRO,
            gradient_accumulation_steps=P * G // MICRO,
            num_generations=G,
            max_completion_length=NEW,
            beta=0.0,
            learning_rate=LR,
            temperature=1.0,
            max_steps=steps,
            logging_steps=1,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
            save_strategy="no",
            loss_type="dapo",
            bf16=bf16_autocast,
            seed=0,
            disable_tqdm=True,
        )
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
        trainer = GRPOTrainer(
            model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok
        )
        seconds = timed_train(trainer)
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    return statistics.median(seconds[1:]), statistics.mean(h["completions/mean_length"] for h in logs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="float32 weights, forward passes in bf16 autocast on both sides (ours: --autocast on; "
        "TRL: bf16=True)",
    )
    parser.add_argument(
        "--rollout-dtype",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="our sampling precision (--rollout-dtype: auto is bf16 on a CPU with fast native bf16)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (for every side compared here: one process)
    task = get_task("arithmetic", digits=2)
    folder = hf_folder(args.model)
    model, tok = load_model(folder)
    n = matmul_params(model.hf)
    prompt_tokens = statistics.mean(
        len(tok.encode(build_prompt(p.question, style="chat", tokenizer=tok.hf)))
        for p in task.problems(64, seed=0)
    )
    del model
    ours_s, ours_len, (ours_gen, ours_train) = run_ours(
        str(folder), task, args.steps, args.dtype, args.autocast, args.rollout_dtype
    )
    trl_s, trl_len = run_trl(folder, task, args.steps, args.dtype, args.autocast)
    peak = matmul_peak(torch.bfloat16 if args.autocast else DTYPES[args.dtype])

    def mfu(seconds: float, length: float) -> float:
        return P * G * (prompt_tokens + length) * 8 * n / seconds / peak

    # The floor: our step's own work (each prompt once, each sampled token; 2N to generate, 6N to
    # train) at the measured peak; TRL's step over it is the highest ratio this machine allows.
    floor = P * (prompt_tokens + G * ours_len) * 8 * n / peak

    print(
        f"model {n:,} matmul params, {args.dtype}{' + bf16 autocast' if args.autocast else ''}; "
        f"{P} prompts x {G} completions, <= {NEW} new tokens; {args.threads} threads; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"{'trainer':<12}{'s/step':>8}{'mean completion':>17}{'MFU':>8}")
    print(f"{'reasonlab':<12}{ours_s:>8.1f}{ours_len:>17.1f}{mfu(ours_s, ours_len):>8.1%}")
    print(f"{'TRL':<12}{trl_s:>8.1f}{trl_len:>17.1f}{mfu(trl_s, trl_len):>8.1%}")
    print(
        f"ours: {ours_gen:.1f} s generating + {ours_train:.1f} s training; "
        f"its work at the peak takes {floor:.1f} s, so the ratio cannot pass {trl_s / floor:.2f} here"
    )
    print(
        json.dumps(
            {
                "bench": "real_grpo_vs_trl",
                "model": str(args.model),
                "dtype": args.dtype,
                "autocast": args.autocast,
                "rollout_dtype": args.rollout_dtype,
                "threads": args.threads,
                "ours_s_per_step": round(ours_s, 2),
                "trl_s_per_step": round(trl_s, 2),
                "ours_generate_s": round(ours_gen, 2),
                "ours_train_s": round(ours_train, 2),
                "ours_floor_s": round(floor, 2),
                "ratio_ceiling": round(trl_s / floor, 2),
                "ours_mean_completion": round(ours_len, 1),
                "trl_mean_completion": round(trl_len, 1),
                "ours_mfu": round(mfu(ours_s, ours_len), 4),
                "trl_mfu": round(mfu(trl_s, trl_len), 4),
                "ratio": round(trl_s / ours_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
