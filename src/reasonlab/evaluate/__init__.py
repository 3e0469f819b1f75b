"""Metrics over completions: format, correctness, reward, thinking length; and `score` over JSONL.

Layout: `scoring` (one completion's scores), `files` (`reasonlab score` over a JSONL file),
`sample` (`reasonlab generate`'s options and sampling), `accuracy` (`evaluate_problems`, what
trainers and studies read), `passk` (pass@k, maj@k), `faithfulness` (the hint probe), `sweeps`
(thinking budgets and length control), `command` (`reasonlab eval`).
"""

from .accuracy import GREEDY, completion_row, evaluate_problems, per_answer, rates
from .command import EvalConfig, evaluate_model, int_list
from .faithfulness import faithfulness_probe, rate, read_row, wilson_interval
from .files import SCORE_CHUNK, read_score_input, score_file
from .passk import k_samples, majority_answer, pass_at_k, pass_curve
from .sample import ModelTaskConfig, SampleConfig, refuse_unreadable, sample_task
from .scoring import score_batch, score_completion
from .sweeps import budget_sweep, length_control

__all__ = [
    "EvalConfig",
    "GREEDY",
    "ModelTaskConfig",
    "SCORE_CHUNK",
    "SampleConfig",
    "budget_sweep",
    "completion_row",
    "evaluate_model",
    "evaluate_problems",
    "faithfulness_probe",
    "int_list",
    "k_samples",
    "length_control",
    "majority_answer",
    "pass_at_k",
    "pass_curve",
    "per_answer",
    "rate",
    "rates",
    "read_row",
    "read_score_input",
    "refuse_unreadable",
    "sample_task",
    "score_batch",
    "score_completion",
    "score_file",
    "wilson_interval",
]
