"""Low-rank adapters (LoRA) on a LLaVA's decoder linears, and the trained delta they make.

    adapters = add_lora(model, rank=16, alpha=32, seed=0)   # model's linears now add B A x
    ...train adapters and the projector...
    tensors = delta_tensors(model, adapters)                # what a run ships (fp16)
    apply_delta(fresh_model, tensors, alpha / rank)         # merged: a plain LLaVA again

A wrapped linear computes `W x + s * B (A x)` with A (r, in), B (out, r) and s = alpha / r; B
starts at zero, so a fresh adapter leaves the model unchanged. `apply_delta` merges them,
`W <- W + s * B A` in float32, and loads the projector (and a trained vision tower, `tower.*`,
where the delta carries one): the result is a plain
`LlavaForConditionalGeneration` (no adapter code needed to load it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTOR = "projector."  # delta key prefix of the projector's weights
LORA = "lora."  # delta key prefix of the adapters: lora.{layer}.{target}.A / .B
TOWER = "tower."  # delta key prefix of the vision tower's weights (only when it was trained)


class LoRA(torch.nn.Module):
    """The adapter alone (A, B), kept apart from the frozen linear so that a checkpoint of the
    trained parameters never holds the base weights."""

    def __init__(self, d_in: int, d_out: int, rank: int, gen: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(d_in)  # kaiming-uniform(a=sqrt(5)), as nn.Linear and peft init A
        self.A = torch.nn.Parameter((torch.rand(rank, d_in, generator=gen) * 2 - 1) * bound)
        self.B = torch.nn.Parameter(torch.zeros(d_out, rank))


class LoRALinear(torch.nn.Module):
    """`base(x) + scale * B (A x)`: a frozen linear plus its adapter."""

    def __init__(self, base: torch.nn.Linear, adapter: LoRA, scale: float):
        super().__init__()
        self.base, self.adapter, self.scale = base, adapter, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.nn.functional.linear(x, self.adapter.A)  # (..., r)
        return self.base(x) + self.scale * torch.nn.functional.linear(low, self.adapter.B)


def _layers(model) -> torch.nn.ModuleList:
    return model.model.language_model.layers


def _owner(layer: torch.nn.Module, target: str) -> torch.nn.Module:
    return layer.self_attn if target in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp


def add_lora(
    model, rank: int, alpha: float, seed: int, targets: tuple[str, ...] = TARGETS
) -> torch.nn.ModuleList:
    """Wrap `targets` of every decoder layer in a LoRALinear (in place); return the adapters,
    one ModuleDict per layer (drawn from a generator seeded with `seed`, layer by layer)."""
    gen = torch.Generator().manual_seed(seed)
    adapters = torch.nn.ModuleList()
    for layer in _layers(model):
        mods = torch.nn.ModuleDict()
        for t in targets:
            owner = _owner(layer, t)
            base = getattr(owner, t)
            mods[t] = LoRA(base.in_features, base.out_features, rank, gen)
            setattr(owner, t, LoRALinear(base, mods[t], alpha / rank))
        adapters.append(mods)
    return adapters


def delta_tensors(
    model, adapters: torch.nn.ModuleList, tower: bool = False
) -> dict[str, torch.Tensor]:
    """The trained delta, fp16: the projector (`projector.*`) and every adapter (`lora.*`);
    with `tower`, the vision tower too (`tower.*`)."""
    out = {PROJECTOR + k: v for k, v in model.model.multi_modal_projector.state_dict().items()}
    out.update({LORA + k: v for k, v in adapters.state_dict().items()})
    if tower:
        out.update({TOWER + k: v for k, v in model.model.vision_tower.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in out.items()}


def apply_delta(model, tensors: dict[str, torch.Tensor], scale: float) -> None:
    """Load the projector (and the vision tower, where the delta carries one) and merge every
    adapter into its linear, `W += scale * B A` in float32 (in place, on a plain LLaVA without
    adapters)."""
    parts = [(PROJECTOR, model.model.multi_modal_projector)]
    if any(k.startswith(TOWER) for k in tensors):
        parts.append((TOWER, model.model.vision_tower))
    for prefix, module in parts:
        own = module.state_dict()
        module.load_state_dict(
            {k[len(prefix) :]: v.to(own[k[len(prefix) :]].dtype)
             for k, v in tensors.items() if k.startswith(prefix)},
            strict=True,
        )  # fmt: skip
    layers = _layers(model)
    pairs = sorted({k[len(LORA) :].rsplit(".", 1)[0] for k in tensors if k.startswith(LORA)})
    with torch.no_grad():
        for name in pairs:  # "{layer}.{target}"
            i, t = name.split(".")
            A = tensors[f"{LORA}{name}.A"].float()  # (r, in)
            B = tensors[f"{LORA}{name}.B"].float()  # (out, r)
            linear = getattr(_owner(layers[int(i)], t), t)
            w = linear.weight
            w.copy_((w.float() + scale * (B @ A)).to(w.dtype))  # (out, in)
    unknown = [k for k in tensors if not k.startswith((PROJECTOR, LORA, TOWER))]
    if unknown:
        raise ValueError(f"unknown delta tensors, e.g. {unknown[0]!r}")


@contextlib.contextmanager
def adapters_off(model) -> Iterator[None]:
    """Within the block every LoRALinear of `model` computes its frozen linear alone: the base
    model (e.g. the teacher of the text rows' KL term); the scales come back afterwards."""
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    scales = [m.scale for m in wrapped]
    for m in wrapped:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, s in zip(wrapped, scales, strict=True):
            m.scale = s


def round_to_fp16(module: torch.nn.Module) -> None:
    """Round `module`'s parameters to fp16 values in place (kept in their dtype), so the model
    in memory is exactly the one the fp16 delta describes."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.float16).to(p.dtype))
