"""A Hugging Face decoder's config and weights as a llama.cpp architecture: hyper-parameters under
``<arch>.*`` and tensors under llama.cpp's names (``gguf.TensorNameMap``).

The architectures exported are those reasonlab trains: the built-in model (a Llama; see
`checkpoint.llama_config`) and HF Llama, Qwen2, Qwen3 and Gemma3 (text). Each is checked for the
features llama.cpp's implementation of it would not reproduce (an unusual RoPE, sliding windows
where llama.cpp has none, biases it does not read, ...): such a model is refused in one line, never
written as a file that runs with other numbers.

Two layouts differ from Hugging Face's:
- llama.cpp's ``llama`` rotates RoPE pairs of adjacent features (2i, 2i+1); HF rotates feature i
  with i + head_dim/2 ("rotate half"). So the rows of each head of the q and k projections are
  reordered: the head's first half goes to the even rows, its second half to the odd ones. The
  attention scores are unchanged (q and k are permuted alike), only the pairing RoPE sees. Qwen2,
  Qwen3 and Gemma3 use the rotate-half ("NEOX") RoPE in llama.cpp too: no reordering.
- Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight, so Gemma norms are written
  plus one.

Llama 3's RoPE scaling (``rope_type`` "llama3") goes in as llama.cpp's ``rope_freqs`` tensor: one
divisor per frequency, computed with transformers' own RoPE code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserError


@dataclass(frozen=True)
class Arch:
    gguf: str  # general.architecture
    interleaved_rope: bool  # reorder q/k rows for llama.cpp's adjacent-pair RoPE
    norm_shift: float = 0.0  # added to every norm weight


# HF model_type -> llama.cpp architecture
ARCHS = {
    "llama": Arch("llama", interleaved_rope=True),
    "qwen2": Arch("qwen2", interleaved_rope=False),
    "qwen3": Arch("qwen3", interleaved_rope=False),
    "gemma3_text": Arch("gemma3", interleaved_rope=False, norm_shift=1.0),
}


def arch_of(config) -> Arch:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        hint = (
            " (a Gemma3 with a vision tower: export its language model, Gemma3ForCausalLM)"
            if model_type == "gemma3"
            else ""
        )
        raise UserError(
            f"cannot export a {model_type!r} model to GGUF: the architectures exported are the built-in "
            f"model, {', '.join(sorted(ARCHS))}{hint}"
        )
    return ARCHS[model_type]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """The RoPE settings of a layer type: transformers 5 keeps them per layer type for Gemma3."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    return {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0), **params}


def check_config(config, arch: Arch) -> None:
    """Refuse what llama.cpp would compute differently (one line naming it)."""
    unsupported = []
    for layer_type in set(getattr(config, "layer_types", None) or ["full_attention"]):
        rope = rope_parameters(config, layer_type)
        if rope["rope_type"] not in ("default", "linear") and not (
            rope["rope_type"] == "llama3" and arch.gguf == "llama"
        ):
            unsupported.append(f"RoPE scaling {rope['rope_type']!r}")
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        unsupported.append("partial rotary embeddings")
    if getattr(config, "mlp_bias", False) and arch.gguf != "llama":
        unsupported.append("MLP biases")
    if getattr(config, "attention_bias", False) and arch.gguf in ("qwen3", "gemma3"):
        unsupported.append("attention biases")
    if arch.gguf == "qwen2" and getattr(config, "use_sliding_window", False):
        unsupported.append("sliding-window attention")
    if arch.gguf == "gemma3":
        unsupported += gemma3_unsupported(config)
    if arch.gguf != "gemma3" and getattr(config, "hidden_act", "silu") != "silu":
        unsupported.append(f"activation {config.hidden_act!r}")
    if unsupported:
        raise UserError(
            f"cannot export this {config.model_type} model to GGUF: llama.cpp's {arch.gguf} has no "
            f"{', '.join(unsupported)}"
        )


def gemma3_unsupported(config) -> list[str]:
    """llama.cpp's gemma3 scales attention by 1/sqrt(head_dim) (1/sqrt(hidden/heads) at 62 layers,
    the 27B), has no attention soft-capping and no full-attention layers among the sliding ones but
    those the file lists."""
    out = []
    expected = (
        config.hidden_size / config.num_attention_heads
        if config.num_hidden_layers == 62
        else head_dim(config)
    )
    if config.query_pre_attn_scalar != expected:
        out.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} (it uses {expected:g})")
    if getattr(config, "attn_logit_softcapping", None):
        out.append("attention logit soft-capping")
    if rope_parameters(config, "sliding_attention")["rope_type"] != "default":
        out.append("RoPE scaling on sliding-window layers")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        out.append(f"activation {config.hidden_activation!r}")
    return out


def write_hparams(writer, config, arch: Arch) -> None:
    """The ``<arch>.*`` hyper-parameters llama.cpp reads for this architecture."""
    hd = head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if arch.gguf == "gemma3":
        write_gemma3(writer, config)


def write_gemma3(writer, config) -> None:
    """Sliding-window layers: the window, which layers have it (all others attend fully), their RoPE base."""
    types = config.layer_types
    if "sliding_attention" in types:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        writer.add_rope_freq_base_swa(rope_parameters(config, "sliding_attention")["rope_theta"])
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(config.final_logit_softcapping)


def gguf_tensors(state: dict[str, torch.Tensor], config, arch: Arch):
    """(llama.cpp name, float32 array) of each weight of `state` (HF names). A weight with no
    llama.cpp name for this architecture is refused."""
    import gguf

    model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch.gguf)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    known = set(gguf.MODEL_TENSORS[model_arch])
    tied = getattr(config, "tie_word_embeddings", False)
    if rope_parameters(config)["rope_type"] == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freq_factors(config)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses the token embedding when output.weight is absent
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in known:
            raise UserError(
                f"cannot export tensor {hf_name} to GGUF: llama.cpp's {arch.gguf} has no such tensor"
            )
        kind, name = found
        yield name, convert_tensor(tensor, kind, config, arch, hf_name)


def rope_freq_factors(config) -> np.ndarray:
    """Llama 3's RoPE scaling as llama.cpp takes it: a divisor of each rotation frequency (the
    ``rope_freqs`` tensor), here the plain frequency over the one transformers computes."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    d, base = head_dim(config), rope_parameters(config)["rope_theta"]
    plain = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    return (plain / scaled.float()).numpy()


def convert_tensor(tensor: torch.Tensor, kind, config, arch: Arch, hf_name: str) -> np.ndarray:
    from gguf import MODEL_TENSOR

    data = tensor.detach().to(torch.float32).cpu()
    if arch.interleaved_rope and kind in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K):
        heads = config.num_attention_heads if kind == MODEL_TENSOR.ATTN_Q else config.num_key_value_heads
        data = interleave_rope_rows(data, heads)
    if arch.norm_shift and hf_name.endswith("norm.weight"):
        data = data + arch.norm_shift
    return data.numpy()


def interleave_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from rotate-half pairs (i, i + d/2) to adjacent ones (2i, 2i + 1):
    row 2i takes old row i, row 2i + 1 old row i + d/2 (a weight (heads * d, in) or a bias)."""
    shape = weight.shape
    d = shape[0] // heads
    return weight.reshape(heads, 2, d // 2, *shape[1:]).transpose(1, 2).reshape(shape)
