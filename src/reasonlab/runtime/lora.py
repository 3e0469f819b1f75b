"""LoRA adapters (`peft`) on a Hugging Face model's weights."""

from __future__ import annotations

from ..errors import UserError
from .options import RuntimeOptions
from .wrappers import unwrap


def add_lora(model, options: RuntimeOptions):
    """Wrap a Hugging Face model's weights with LoRA adapters (peft); only the adapters train."""
    if getattr(model, "kind", "") != "hf":
        raise UserError(
            "LoRA needs a Hugging Face model (--model PATH); the built-in model is small "
            "enough to train fully"
        )
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("LoRA needs peft: pip install 'reasonlab[lora]'") from None
    targets = (
        options.lora_targets
        if options.lora_targets == "all-linear"
        else [t.strip() for t in options.lora_targets.split(",") if t.strip()]
    )
    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    try:
        model.hf = get_peft_model(model.hf, config)
    except ValueError as e:  # peft names the modules it could not find
        raise UserError(f"LoRA: {e}") from None
    return model


def has_lora(model) -> bool:
    return hasattr(getattr(unwrap(model), "hf", None), "peft_config")
