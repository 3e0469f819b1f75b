"""reasonlab: train language models to reason, and measure what reasoning buys."""

__version__ = "0.1.0"
