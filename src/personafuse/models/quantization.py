"""Optional bitsandbytes quantisation of the frozen base (QLoRA-style): ``load_in="4bit"`` (nf4) or ``"8bit"``.

Only the base's linear layers are quantised; the experts, router, embeddings, norms and output head stay in
floating point. bitsandbytes is an optional extra (``pip install 'personafuse[quant]'``), imported only when a
quantised base is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import BitsAndBytesConfig

LoadIn = Literal["4bit", "8bit"]
LOAD_IN_CHOICES: tuple[str, ...] = ("4bit", "8bit")
INSTALL_HINT = "pip install 'personafuse[quant]'"


def check_bitsandbytes(load_in: str | None, field: str = "load_in") -> str | None:
    """None when ``load_in`` can be served here; else a one-line problem naming ``field`` and the fix.

    Args:
        load_in: the requested quantisation (None = unquantised, always fine).
        field: the name the user typed, for the message (``model.load_in`` in a training config).
    """
    if load_in is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return (
            f"{field}={load_in!r} needs bitsandbytes, which is not installed; install it with {INSTALL_HINT}, "
            f"or set {field} to null for an unquantised base"
        )
    return None


def bnb_config(load_in: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """transformers' ``BitsAndBytesConfig`` for ``load_in``: nf4 with double quantisation for 4-bit (QLoRA's recipe).

    Raises:
        ModelLoadError: bitsandbytes is not installed (the message names ``pip install 'personafuse[quant]'``).
        ValueError: ``load_in`` is not one of ``LOAD_IN_CHOICES``.
    """
    from transformers import BitsAndBytesConfig

    from personafuse.errors import ModelLoadError

    if load_in not in LOAD_IN_CHOICES:
        raise ValueError(f"load_in must be one of {list(LOAD_IN_CHOICES)} or None, got {load_in!r}")
    problem = check_bitsandbytes(load_in)
    if problem:
        raise ModelLoadError(problem)
    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def keep_cpu_kernel_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    Why: on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight in place at its first
    eval-mode forward without grad, and from then on runs every forward (training ones too) through a kernel
    with no backward: gradients to the layer's input are silently dropped (torch warns "an autograd kernel was
    not registered"), so experts below that layer would train on partial gradients. The repacking also rounds
    the block scales to bf16, so eval and training outputs would differ. Keeping the portable kernel costs CPU
    decoding speed only; GPUs never take this path.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes Linear4bit and subclasses
            module.support_avx512bf16_for_cpu = False


def is_quantized_weight(weight: torch.Tensor) -> bool:
    """True for a quantised (integer-stored) weight such as bitsandbytes' uint8 ``Params4bit`` / int8 ``Int8Params``."""
    return not weight.dtype.is_floating_point
