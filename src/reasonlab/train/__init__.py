"""Trainers: pretraining, supervised fine-tuning, Method 1 (self-generated rationales), Method 2 (GRPO)."""
