"""A training run's lifecycle, shared by every trainer (supervised `train.loop`, GRPO `rl.trainer`):

- `optim`: the optimiser and its learning-rate schedule (`OptimConfig`, `make_optimizer`, `lr_at`);
- `state`: the resumable state on disk (atomic saves, `SaveClock`, loading, resume checks, hashes);
- `lifecycle`: `Run`, which starts or resumes a run, ends each step (budgets, the stop broadcast
  across ranks, evaluation cadence, the log and trackers, saves, the divergence stop) and saves the
  last good state when a step fails;
- `final`: `save_trained`, the trained model saved to OUT/model (and a LoRA adapter beside it).

It sits below the trainers and imports neither.
"""

from .lifecycle import Run
from .optim import OptimConfig, lr_at, make_optimizer

__all__ = ["OptimConfig", "Run", "lr_at", "make_optimizer"]
