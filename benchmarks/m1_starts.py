"""Method 1's models as starting points for GRPO (`diag_grpo.py --start`, `bench_peer_curves.py`):
the demo's Method 1 (free-form samples read into the template, three rounds, each fine-tuning 300
steps from the last) from a base checkpoint, saving each round's model as OUT/roundN; with
`--answer-only`, the same without the step check (a sample is kept on its final answer alone, the
seed's wording of the method), saved as OUT/answer_only_roundN. `--set key=value` overrides a
`RationalesConfig` field (e.g. steps=60 for a lighter fine-tuning).

Run: python benchmarks/m1_starts.py --base CKPT --out DIR [--rounds 3] [--answer-only] [--seed 0]
"""

import argparse
import dataclasses
import json
from pathlib import Path

from reasonlab.lab.arms import arm_configs
from reasonlab.model import load_model, save_checkpoint
from reasonlab.runtime import keep_freed_memory
from reasonlab.selection import parse_value
from reasonlab.tasks import get_task
from reasonlab.train.rationales import run_rationales


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-only", action="store_true", help="keep samples on the final answer alone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    keep_freed_memory()
    task = get_task("chain", length=4, min_length=2)  # the demo's mix
    m1 = arm_configs(False, args.seed, task)["method1"]
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    m1 = dataclasses.replace(m1, rounds=args.rounds, check_steps=not args.answer_only, **overrides)
    base, tok = load_model(args.base)
    prefix = "answer_only_round" if args.answer_only else "round"
    out = Path(args.out)

    def on_round(record, model):
        save_checkpoint(out / f"{prefix}{record['round']}", model, tok)
        kept = {
            k: record.get(k)
            for k in ("round", "samples", "kept", "solved", "lucky_dropped", "accuracy")
            if k in record
        }
        print(json.dumps(kept), flush=True)

    run_rationales(base, tok, task, m1, out_dir=out / f"{prefix}_work", on_round=on_round)


if __name__ == "__main__":
    main()
