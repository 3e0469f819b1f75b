"""The real-model pipeline (`reasonlab demo --model PATH`) against its targets: format rate from 0%
to >= 95%, held-out accuracy at least twice the base model's best prompting, the whole run within
45 minutes and 8 GB of peak RSS on this machine (docs/real-model.md).

Runs the pipeline in this process (so its peak RSS is this process's), then prints each target
with the measured value and one JSON line: the results' headline numbers, `seconds`, `peak_rss_gb`
and `targets` (name -> met).

Run: python benchmarks/bench_real_pipeline.py --model PATH [--out runs/real] [--seed 0]
"""

import argparse
import json
import resource
import time

from reasonlab.lab.demo import run_demo
from reasonlab.lab.settings import DemoConfig
from reasonlab.runtime import keep_freed_memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--model", required=True, help="Hugging Face folder or .gguf file (SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--out", default="runs/real")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.monotonic()
    keep_freed_memory()  # as the CLI does
    results = run_demo(DemoConfig(model=args.model, out=args.out, seed=args.seed, overwrite=True))
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    best_prompting = max(
        results["base_direct_acc"], results["base_cot_prompt_acc"], results["base_template_acc"]
    )
    final_acc = results["method2_acc"]
    targets = {
        "format >= 95%": (results["method2_format_rate"] >= 0.95, f"{results['method2_format_rate']:.0%}"),
        "accuracy >= 2x best prompting": (
            final_acc >= 2 * best_prompting,
            f"{final_acc:.0%} vs 2 x {best_prompting:.0%}",
        ),
        "wall <= 45 min": (seconds <= 45 * 60, f"{seconds / 60:.1f} min"),
        "peak RSS <= 8 GB": (peak <= 8, f"{peak:.2f} GB"),
    }
    for name, (met, value) in targets.items():
        print(f"{'met ' if met else 'MISSED'}  {name:32s} {value}")
    print(
        json.dumps(
            {
                "base_direct_acc": results["base_direct_acc"],
                "base_cot_prompt_acc": results["base_cot_prompt_acc"],
                "base_template_acc": results["base_template_acc"],
                "base_format_rate": results["base_format_rate"],
                "method1_acc": results["method1_acc"],
                "method2_acc": final_acc,
                "method2_format_rate": results["method2_format_rate"],
                "cold_start_acc": results["cold_start"]["acc"],
                "r1_zero": results["r1_zero"]["summary"],
                "seconds": round(seconds),
                "peak_rss_gb": round(peak, 2),
                "targets": {name: met for name, (met, _) in targets.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
