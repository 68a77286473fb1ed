"""The Persona MoE linear layer: a frozen base linear plus ten LoRA experts mixed by per-row gates.

    y = W x + b + (alpha / r) * sum_e g[row, e] * B_e A_e x

The experts are stored stacked, in :data:`personafuse.traits.POLES` order, so that a whole mix costs two
matmuls (``A`` of shape [E*r, in], ``B`` of shape [out, E*r]) rather than a Python loop over experts:

    xa    = x @ A.T                      # [batch, seq, E*r]
    xa   *= gates repeated r times       # each row its own mix
    delta = xa @ B.T * scaling           # [batch, seq, out]

The gates are fixed for a whole reply (routing is per context), so everything that depends only on the gates
is prepared once, when they are set, not at every decoded token (see :class:`GateState`):
- only the experts with a non-zero gate in some row are kept (top-k gates fold to a rank k*r adapter);
- when all rows share one mix, the gates and scaling are folded into B, so the turn's mix is exactly one
  ordinary LoRA of rank (number of active experts) * r.
Why not PEFT's multi-adapter LoRA: PEFT applies adapters one after another in a Python loop, and its
mixed-batch mode selects one adapter per row, not a weighted mix per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from personafuse.traits import POLES

NUM_EXPERTS = len(POLES)

Prepared = tuple[str, torch.Tensor, torch.Tensor, "torch.Tensor | None"]
"""(kind, first matrix, second matrix, per-row scale or None): see :meth:`PersonaLoRALinear._prepare`."""


@dataclass
class GateState:
    """Gates shared by every persona layer of one model, and a version so layers re-prepare lazily.

    ``gates`` is ``None`` (or ``enabled`` false) for the exact base model; otherwise a float tensor
    ``[batch, 10]``. A batch that is a multiple of the gates' rows (beam search, ``num_return_sequences``)
    reuses each row's gates for its copies, matching how ``generate`` expands inputs (repeat_interleave).
    """

    gates: torch.Tensor | None = None
    enabled: bool = True
    version: int = 0
    _shared: bool = field(default=False, repr=False)
    _active: torch.Tensor | None = field(default=None, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def memo(self, key: tuple, compute):
        """Gate-derived tensors shared by every layer of the same rank/scaling/dtype (cleared by :meth:`set`).

        Preparing 200+ layers for new gates then costs one small op per layer instead of several.
        """
        if self.gates is not None and self.gates.requires_grad:
            return compute()  # a differentiable mix (router training): never reuse a graph across steps
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def set(self, gates: torch.Tensor | None) -> None:
        """Set new gates ([batch, 10], non-negative) or ``None``; layers re-prepare on their next forward."""
        if gates is not None:
            if gates.dim() == 1:
                gates = gates.unsqueeze(0)
            if gates.dim() != 2 or gates.shape[1] != NUM_EXPERTS:
                raise ValueError(f"gates must have shape [batch, {NUM_EXPERTS}], got {tuple(gates.shape)}")
            gates = gates.detach() if not gates.requires_grad else gates
            self._shared = bool((gates == gates[:1]).all())
            active = (gates != 0).any(dim=0)
            self._active = active.nonzero().flatten() if bool(active.any()) else None
        else:
            self._shared, self._active = False, None
        self.gates = gates
        self._memo = {}
        self.version += 1

    @property
    def is_base(self) -> bool:
        """True when layers must return exactly the base output."""
        return not self.enabled or self.gates is None or self._active is None

    @property
    def shared(self) -> bool:
        """True when every row has the same mix (the fold-into-one-LoRA fast path applies)."""
        return self._shared

    @property
    def active_experts(self) -> torch.Tensor | None:
        """Indices of experts with a non-zero gate in at least one row."""
        return self._active


class PersonaLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with ten stacked LoRA experts mixed by the shared :class:`GateState`.

    The base may be a quantised linear (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``, whose weight is stored as
    integers): the experts then take ``dtype`` (the compute dtype), and merging is refused (see :meth:`merge`).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, state: GateState,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        """Wrap ``base``; ``dtype`` is the experts' dtype (default: the base weight's, which must then be a float).

        Raises:
            TypeError: no ``dtype`` for a base whose weight is stored quantised (not a floating-point dtype).
        """
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = float(alpha) / rank
        self.state = state
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dtype is None:
            dtype = base.weight.dtype
        if not dtype.is_floating_point:
            raise TypeError(
                f"experts of dtype {dtype} are not trainable; {type(base).__name__} stores its weight as "
                f"{base.weight.dtype} (a quantised base), so pass dtype=<its compute dtype>, e.g. torch.bfloat16"
            )
        factory = {"device": base.weight.device, "dtype": dtype}
        # Stacked experts: rows e*r:(e+1)*r of A and columns e*r:(e+1)*r of B belong to expert POLES[e].
        self.lora_A = nn.Parameter(torch.empty(NUM_EXPERTS * rank, base.in_features, **factory))  # [E*r, in]
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, NUM_EXPERTS * rank, **factory))  # [out, E*r]
        self.reset_experts(init_b="zeros")
        self.merged_gates: torch.Tensor | None = None
        self._prepared_version = -1
        self._prepared: Prepared | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads .weight of projections (dtype/device checks)
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def quantized(self) -> bool:
        """True when the base weight is stored quantised (bitsandbytes uint8 / int8): it cannot take a merge."""
        return not self.base.weight.dtype.is_floating_point

    def reset_experts(self, init_b: str = "zeros", generator: torch.Generator | None = None) -> None:
        """Re-initialise the experts: A as in PEFT (Kaiming uniform), B zeros (a no-op adapter) or random.

        ``init_b="random"`` gives non-zero deltas, so tests of the mixing maths are not vacuous.
        """
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.base.in_features)
            self.lora_A.uniform_(-bound, bound, generator=generator)
            if init_b == "zeros":
                self.lora_B.zero_()
            elif init_b == "random":
                self.lora_B.normal_(0.0, 0.02, generator=generator)
            else:
                raise ValueError(f"init_b must be 'zeros' or 'random', got {init_b!r}")
        self._prepared_version = -1

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_e [r, in], B_e [out, r]) views of one expert."""
        rows = slice(expert * self.rank, (expert + 1) * self.rank)
        return self.lora_A[rows], self.lora_B[:, rows]

    def _prepare(self) -> Prepared:
        """Matrices for the current gates; which form depends on how the rows' mixes relate.

        - shared mix: ``("fold", A_act [k*r, in], B_act * gates [out, k*r])``, one ordinary LoRA;
        - sparse distinct mixes (each row fewer experts than the batch's union, e.g. top-k or hard routing
          in stage-1 training): ``("gather", A_rows [batch, in, kmax*r], B_rows * gates [batch, kmax*r, out])``,
          two batched matmuls at the cost of one rank kmax*r LoRA per row;
        - dense distinct mixes: ``("stack", A_act, B_act, scale [batch, k*r])``.
        """
        state = self.state
        active = state.active_experts
        assert active is not None and state.gates is not None
        r = self.rank
        dtype, device = self.lora_B.dtype, self.lora_B.device
        if not state.shared:
            plan = state.memo(("gather", r, self.scaling, dtype, device), lambda: self._gather_plan(active))
            if plan is not None:
                idx, row_gates = plan
                a_rows = self.lora_A.view(NUM_EXPERTS, r, -1)[idx]  # [batch, kmax, r, in]
                a_rows = a_rows.flatten(1, 2).transpose(1, 2)  # [batch, in, kmax*r]
                b_rows = self.lora_B.view(self.out_features, NUM_EXPERTS, r).permute(1, 2, 0)[idx]  # [b, kmax, r, out]
                b_rows = b_rows * row_gates[:, :, None, None]
                return ("gather", a_rows, b_rows.flatten(1, 2), None)  # [batch, kmax*r, out]
        cols, scale = state.memo(("stack", r, self.scaling, dtype, device), lambda: self._stack_plan(active))
        a, b = (self.lora_A, self.lora_B) if cols is None else (self.lora_A[cols], self.lora_B[:, cols])
        if state.shared:
            return ("fold", a, b * scale[0], None)
        return ("stack", a, b, scale)

    def _gather_plan(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(expert index [batch, kmax], gate·scaling [batch, kmax]) when rows are sparser than their union."""
        gates = self.state.gates.to(self.lora_B.dtype)  # [batch, E]
        kmax = int((gates != 0).sum(dim=1).max())
        if kmax >= active.numel():
            return None
        idx = gates.topk(kmax, dim=1).indices  # zero gates pad the rows with fewer experts
        return idx, gates.gather(1, idx) * self.scaling

    def _stack_plan(self, active: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(columns of the active experts, or None for all; per-row scale [batch, k*r])."""
        r = self.rank
        gates = self.state.gates.to(self.lora_B.dtype)
        cols = None
        if active.numel() != NUM_EXPERTS:
            cols = (active.unsqueeze(1) * r + torch.arange(r, device=active.device)).flatten()  # [k*r]
        return cols, gates[:, active].repeat_interleave(r, dim=1) * self.scaling  # [batch, k*r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        state = self.state
        if state.is_base or self.merged_gates is not None:
            return result
        # Prepared matrices depend only on the gates; they are rebuilt when the gates change, and always
        # while training (the gradient must flow into lora_A / lora_B, not into a stale copy).
        if self.training or self._prepared_version != state.version or self._prepared is None:
            prepared = self._prepare()
            if not self.training:
                self._prepared, self._prepared_version = prepared, state.version
        else:
            prepared = self._prepared
        kind, a, b, scale = prepared
        out_2d = result.view(-1, result.shape[-1])  # [tokens, out]
        if kind == "fold":
            xa = F.linear(self.dropout(x), a)  # [batch, seq, k*r]
            # addmm fuses the second matmul with the residual add: one kernel fewer per layer and token.
            return torch.addmm(out_2d, xa.view(-1, xa.shape[-1]), b.T).view(result.shape)
        rows = x.shape[0]
        first = a if kind == "gather" else scale
        if first.shape[0] != rows:  # generate() expanded each row (beams, num_return_sequences)
            if rows % first.shape[0]:
                raise ValueError(f"batch of {rows} rows does not match gates for {first.shape[0]} rows")
            repeat = rows // first.shape[0]
            if kind == "gather":
                a, b = a.repeat_interleave(repeat, dim=0), b.repeat_interleave(repeat, dim=0)
            else:
                scale = scale.repeat_interleave(repeat, dim=0)
        if kind == "gather":
            flat = self.dropout(x).reshape(rows, -1, x.shape[-1])  # [batch, tokens, in]
            xa = torch.bmm(flat, a)  # [batch, tokens, kmax*r]
            return torch.baddbmm(result.view(rows, -1, result.shape[-1]), xa, b).view(result.shape)
        xa = F.linear(self.dropout(x), a)  # [batch, seq, k*r]
        xa = xa * scale.view(rows, *([1] * (x.dim() - 2)), -1)  # broadcast over the sequence
        return torch.addmm(out_2d, xa.view(-1, xa.shape[-1]), b.T).view(result.shape)

    def delta_weight(self, gates: torch.Tensor) -> torch.Tensor:
        """The dense weight delta (alpha/r) * sum_e g_e B_e A_e for one mix ``gates`` [10]: [out, in]."""
        scale = gates.to(self.lora_B.dtype).repeat_interleave(self.rank) * self.scaling  # [E*r]
        return (self.lora_B * scale) @ self.lora_A

    def merge(self, gates: torch.Tensor) -> None:
        """Add one fixed mix into the base weight; forward then costs exactly the base's.

        Raises:
            UserError: the base weight is quantised (adding a float delta to 4-bit codes is not a merge).
            RuntimeError: a persona is already merged.
        """
        if self.quantized:
            raise quantized_merge_error(self)
        if self.merged_gates is not None:
            raise RuntimeError("a persona is already merged; unmerge it first")
        with torch.no_grad():
            self.base.weight += self.delta_weight(gates).to(self.base.weight.dtype)
        self.merged_gates = gates.detach().clone()

    def unmerge(self) -> None:
        """Subtract the merged mix again (float32: within ~1e-6 of the original weights)."""
        if self.merged_gates is None:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight(self.merged_gates).to(self.base.weight.dtype)
        self.merged_gates = None

    def extra_repr(self) -> str:
        return f"experts={NUM_EXPERTS}, rank={self.rank}, scaling={self.scaling:g}"


def quantized_merge_error(layer: PersonaLoRALinear, name: str = "") -> Exception:
    """The one-line error for merging into a quantised base (``name``: the layer's module name, if known)."""
    from personafuse.errors import UserError

    where = f"{name} ({type(layer.base).__name__})" if name else type(layer.base).__name__
    return UserError(
        f"merging a persona needs an unquantised base, but {where} stores its weight as {layer.base.weight.dtype} "
        "(a load_in='4bit'/'8bit' base); reload without load_in (PersonaFuse.from_pretrained(path, load_in=None)) "
        "to merge or export merged, or keep the experts unmerged: routing works on a quantised base"
    )
