"""Method 2: reinforcement learning on the model's own samples (GRPO family).

Read top to bottom: `trainer.train_grpo` runs the steps; each step collects groups (`collect`),
builds the batch (`batch`), updates the model (`update`) and logs (`log`), passing the typed records
of `types`. The math is in `algos` (registered advantage estimators, policy losses, aggregations);
the settings in `config.GRPOConfig`.
"""

from .config import GRPOConfig
from .trainer import train_grpo

__all__ = ["GRPOConfig", "train_grpo"]
