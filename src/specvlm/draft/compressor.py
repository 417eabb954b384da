"""SpecVLM's elastic visual compressor: what the DRAFT reads of the image (the target reads all).

The target's prompt holds P visual tokens per image, on a grid (frames, height, width). The
draft reads each image as m compressed tokens instead, each paired with a target feature, so its
prefill and its KV cache shrink with the image. The target still reads and verifies everything,
so the output is unchanged whatever the compressor does (trained or not).

Operators on one image's grid, V (P, d) the projector's visual embeddings:

    prune       keep round(P / r) tokens at positions drawn once from a seeded generator
    prune_norm  keep the round(P / r) tokens of largest embedding norm (importance)
    pool        average s x s windows of the grid, s = ceil(sqrt(r)) (edge windows: the cells
                inside the grid); (t, h, w) -> (t, ceil(h/s), ceil(w/s))
    conv        a learned strided convolution over the same windows (depthwise s x s, stride s,
                then a d x d linear; initialised to the window mean)
    resampler   one cross-attention layer: q learned queries attend over the P tokens -> q tokens
    text        no visual tokens at all

Pairing (our choice; the paper leaves it open): every compressed token comes with the target
feature it stands for, a fixed linear summary of the target's features over the same tokens:
the kept positions' features for pruning, the window mean for pool and conv, the attention
weights' average for the resampler. The draft row of a compressed token reads (paired feature,
next token's embedding) exactly as a text row reads (f_i, e_{i+1}).

Modes (`CompressorConfig.mode`):

    select  (default, SpecVLM's dynamic selection) a gate reading the target's feature at the last
            prompt token picks ONE operator per input: Gumbel-softmax (straight-through) in
            training, argmax at inference; every image of the input uses it
    mix     a question-aware gate blends prune / pool / conv outputs at one ratio (same count)
    concat  the operators' outputs at their own ratios, one after another
    fixed   one operator, no gate (ablations)

Positions: the draft numbers ITS OWN sequence (text rows, then the compressed rows where an
image was, ...) 0, 1, 2, ...; its KV cache holds T - Δ prompt positions, Δ = the visual tokens it
does not read, fixed at prefill. The same `ElasticCompressor.forward` builds the draft's rows in
training (`specvlm.train.distill`) and in decoding (`EagleDrafter.begin`).

Where the visual tokens sit, and on what grid, comes with the target's prefill
(`Prefill.visual`, set by the target adapter): this module never imports a model family.

Ablations force another setting on a trained compressor at inference (`ElasticCompressor.
override`): one operator alone, at any ratio for the parameter-free ones, or every operator
concatenated; the forced settings reuse the modules trained under the draft's own mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specvlm.errors import InputError
from specvlm.target.base import NO_VISUAL, VisualLayout, VisualSpan

__all__ = [
    "MODES",
    "NO_VISUAL",
    "OPERATORS",
    "Compressed",
    "CompressorConfig",
    "ElasticCompressor",
    "VisualLayout",
    "VisualSpan",
    "compressor_config",
]

OPERATORS = ("prune", "prune_norm", "pool", "conv", "resampler", "text")
MODES = ("select", "mix", "concat", "fixed")
RATIO_OPERATORS = ("prune", "prune_norm", "pool", "conv")  # the ones a ratio r applies to
MIX_OPERATORS = RATIO_OPERATORS  # same token count at one ratio, so they can be blended
# defaults from the paper: the concatenation scales (prune / pool 20x, conv 3x, 2 queries) for
# every branch; the weighted mix at one ratio of 3x (<= 5x)
DEFAULT_RATIOS = {"prune": 20.0, "prune_norm": 20.0, "pool": 20.0, "conv": 3.0}
MIX_RATIO = 3.0
DEFAULT_OPERATORS = {
    "select": ("prune", "pool", "conv", "resampler", "text"),
    "mix": ("prune", "pool", "conv"),
    "concat": ("prune", "pool", "conv", "resampler"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompressorConfig:
    """What the draft reads of each image. Stored in the draft folder's config.json.

    operators: the branches (empty = the mode's defaults, written out explicitly);
    ratios: operator -> reduction ratio r >= 1 for prune / prune_norm / pool / conv (missing =
    the default; in mix mode all equal); queries: the resampler's learned queries; seed: the
    random pruning's positions; gumbel_tau: the Gumbel-softmax temperature (select, training).
    """

    mode: str = "select"
    operators: tuple[str, ...] = ()
    ratios: dict[str, float] = field(default_factory=dict)
    queries: int = 2
    seed: int = 0
    gumbel_tau: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"compressor mode {self.mode!r} is unknown; accepted: {MODES}")
        ops = self.operators
        if isinstance(ops, str) or not isinstance(ops, list | tuple):
            raise InputError(f"compressor operators must be a list of names, got {ops!r}")
        ops = tuple(ops) or DEFAULT_OPERATORS.get(self.mode, ())
        unknown = [op for op in ops if op not in OPERATORS]
        if unknown:
            raise InputError(f"unknown compressor operators {unknown}; accepted: {OPERATORS}")
        if len(set(ops)) != len(ops):
            raise InputError(f"compressor operators {list(ops)} name one twice")
        if self.mode == "fixed" and len(ops) != 1:
            raise InputError(f"compressor mode 'fixed' takes exactly one operator, got {ops}")
        if self.mode in ("select", "mix") and len(ops) < 2:
            raise InputError(f"compressor mode {self.mode!r} chooses among >= 2 operators")
        if self.mode == "mix" and not set(ops) <= set(MIX_OPERATORS):
            raise InputError(
                f"compressor mode 'mix' blends operators of one token count: {MIX_OPERATORS}, "
                f"got {ops}"
            )
        if self.mode == "concat" and "text" in ops:
            raise InputError("compressor mode 'concat' cannot take 'text' (it adds no tokens)")
        ratios = self.ratios
        if not isinstance(ratios, dict):
            raise InputError(f"compressor ratios must map operator -> ratio, got {ratios!r}")
        stray = sorted(set(ratios) - (set(ops) & set(RATIO_OPERATORS)))
        if stray:
            raise InputError(
                f"compressor ratios for {stray}: a ratio applies to the chosen operators "
                f"among {RATIO_OPERATORS}, here {[op for op in ops if op in RATIO_OPERATORS]}"
            )
        for op, r in ratios.items():
            if not _is_number(r) or not math.isfinite(r) or r < 1:
                raise InputError(f"compressor ratio of {op} must be a number >= 1, got {r!r}")
        if self.mode == "mix":  # one ratio: the one given for any of them, else 3x
            one = next(iter(ratios.values()), MIX_RATIO)
            full = {op: float(ratios.get(op, one)) for op in ops}
        else:
            full = {
                op: float(ratios.get(op, DEFAULT_RATIOS[op])) for op in ops if op in RATIO_OPERATORS
            }
        if self.mode == "mix" and len(set(full.values())) > 1:
            raise InputError(f"compressor mode 'mix' blends at ONE ratio; got {full}")
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1:
            raise InputError(f"compressor queries must be an integer >= 1, got {self.queries!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"compressor seed must be an integer >= 0, got {self.seed!r}")
        tau = self.gumbel_tau
        if not _is_number(tau) or not math.isfinite(tau) or tau <= 0:
            raise InputError(f"compressor gumbel_tau must be a number > 0, got {tau!r}")
        object.__setattr__(self, "operators", ops)
        object.__setattr__(self, "ratios", full)

    @classmethod
    def from_dict(cls, data: Any) -> CompressorConfig:
        if not isinstance(data, dict):
            raise InputError(f"a compressor config must be an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown compressor keys {unknown}; accepted: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "operators": list(self.operators)}

    def ratio(self, op: str) -> float:
        return self.ratios[op]


def compressor_config(
    spec: str,
    operators: str | None = None,
    ratios: list[str] | None = None,
    queries: int = 2,
) -> CompressorConfig:
    """The command line's form: a mode (select / mix / concat) or one operator (fixed), the
    branches as "a,b,c", ratios as ["pool=4", "conv=2"]."""
    if spec in OPERATORS:
        if operators:
            raise InputError(
                f"--compressor {spec} is one operator; --compressor-operators is for the modes "
                "select / mix / concat"
            )
        mode, ops = "fixed", (spec,)
    elif spec in MODES and spec != "fixed":
        mode = spec
        ops = tuple(o.strip() for o in operators.split(",") if o.strip()) if operators else ()
    else:
        raise InputError(
            f"--compressor {spec!r}: give a mode (select, mix, concat) or one operator "
            f"({', '.join(OPERATORS)})"
        )
    parsed: dict[str, float] = {}
    for item in ratios or []:
        op, sep, value = item.partition("=")
        try:
            parsed[op.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--compressor-ratio {item!r}: give OPERATOR=RATIO, e.g. pool=4")
    return CompressorConfig(mode=mode, operators=ops, ratios=parsed, queries=queries)


# ---- geometry (pure) ------------------------------------------------------------------------
def window(ratio: float) -> int:
    """The pool / conv window side s for a ratio r: s = ceil(sqrt(r)), so s*s >= r."""
    return max(1, math.ceil(math.sqrt(ratio) - 1e-9))


def pooled_count(grid: tuple[int, int, int], s: int) -> int:
    t, h, w = grid
    return t * math.ceil(h / s) * math.ceil(w / s)


def prune_count(P: int, ratio: float) -> int:
    return max(1, min(P, round(P / ratio)))


def grid_pool(x: torch.Tensor, grid: tuple[int, int, int], s: int) -> torch.Tensor:
    """(P, d) on a (t, h, w) grid -> (t * ceil(h/s) * ceil(w/s), d): the mean of each s x s
    window's cells inside the grid (windows at the bottom / right edge may be smaller)."""
    t, h, w = grid
    d = x.shape[-1]
    g = x.reshape(t, h, w, d).permute(0, 3, 1, 2)  # (t, d, h, w)
    k = (min(s, h), min(s, w))
    out = F.avg_pool2d(g, k, k, ceil_mode=True)  # (t, d, ceil(h/s), ceil(w/s))
    return out.permute(0, 2, 3, 1).reshape(-1, d)  # (m, d), frame-major, row-major


@lru_cache(maxsize=64)
def random_keep(P: int, m: int, seed: int) -> torch.Tensor:
    """(m,) the positions random pruning keeps among P, ascending; the same for the same args."""
    perm = torch.randperm(P, generator=torch.Generator().manual_seed(seed), device="cpu")
    return perm[:m].sort().values


def norm_keep(embeds: torch.Tensor, m: int) -> torch.Tensor:
    """(m,) the positions of the m embeddings (P, d) of largest L2 norm, ascending."""
    return embeds.float().norm(dim=-1).topk(m).indices.sort().values


# ---- learned operators ----------------------------------------------------------------------
class StridedConv(nn.Module):
    """Depthwise s x s convolution with stride s over the grid, then a d x d linear: a learned
    weighting of the pool windows. Initialised to the window mean (zeros pad the edges)."""

    def __init__(self, d: int, s: int) -> None:
        super().__init__()
        self.s = s
        self.depthwise = nn.Conv2d(d, d, s, stride=s, groups=d)
        self.mix = nn.Linear(d, d)
        with torch.no_grad():
            self.depthwise.weight.fill_(1.0 / (s * s))
            self.depthwise.bias.zero_()
            self.mix.weight.copy_(torch.eye(d))
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(P, d) -> (t * ceil(h/s) * ceil(w/s), d), the windows of `grid_pool`."""
        t, h, w = grid
        d, s = x.shape[-1], self.s
        g = x.reshape(t, h, w, d).permute(0, 3, 1, 2)  # (t, d, h, w)
        g = F.pad(g, (0, -w % s, 0, -h % s))  # zeros at the right / bottom: (t, d, h', w')
        g = self.depthwise(g)  # (t, d, ceil(h/s), ceil(w/s))
        return self.mix(g.permute(0, 2, 3, 1).reshape(-1, d))  # (m, d)


class Resampler(nn.Module):
    """One cross-attention layer (one head): q learned queries over the P visual tokens.

    Returns the q tokens and the attention weights (q, P), which also pair them with the target's
    features. Value and output projections start as the identity, so an untrained resampler
    returns attention-weighted means of the visual embeddings."""

    def __init__(self, d: int, queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        # not q_proj / k_proj / v_proj: those names are fused by layers.prepare_for_inference,
        # which assumes they read one input
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d)
        with torch.no_grad():
            self.to_v.weight.copy_(torch.eye(d))
            self.out.weight.copy_(torch.eye(d))
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, d) -> tokens (q, d), attention (q, P)."""
        q = self.to_q(self.queries)  # (q, d)
        k = self.to_k(self.norm(x))  # (P, d)
        attn = torch.softmax((q @ k.T).float() / math.sqrt(q.shape[-1]), dim=-1)  # (q, P)
        attn = attn.to(x.dtype)
        return self.out(attn @ self.to_v(x)), attn


# ---- the compressor -------------------------------------------------------------------------
Pair = Callable[[torch.Tensor], torch.Tensor]  # a span's target features (P, d) -> paired (m, d)


@dataclass
class Compressed:
    """The draft's rows for one sequence."""

    embeds: torch.Tensor  # (S', d) what the draft reads as "the next token's embedding"
    features: tuple[torch.Tensor, ...]  # each (S', d): the paired target features
    source: torch.Tensor  # (S',) long: the prompt position of a text row, -1 for compressed
    choice: str | None = None  # select / mix: the gate's (dominant) operator


class ElasticCompressor(nn.Module):
    """Compresses the visual spans of a sequence; see the module docstring."""

    def __init__(
        self, config: CompressorConfig, hidden_size: int, trained: ElasticCompressor | None = None
    ) -> None:
        """trained: take its modules (conv, resampler, gate) instead of new ones (`override`)."""
        super().__init__()
        self.config = config
        self.hidden_size = d = hidden_size
        ops = config.operators
        if trained is not None:  # shared, not copied: the names its state_dict has
            for name in ("conv", "resampler", "gate"):
                if name in ops or (name == "gate" and config.mode in ("select", "mix")):
                    setattr(self, name, getattr(trained, name))
            return
        if "conv" in ops:
            self.conv = StridedConv(d, window(config.ratio("conv")))
        if "resampler" in ops:
            self.resampler = Resampler(d, config.queries)
        if config.mode in ("select", "mix"):
            self.gate = nn.Linear(d, len(ops))  # reads the target's feature at the last prompt
            with torch.no_grad():  # token; untrained: uniform (argmax: the first operator)
                self.gate.weight.zero_()
                self.gate.bias.zero_()

    def override(self, config: CompressorConfig) -> ElasticCompressor:
        """The same trained modules under another setting, for ablations at inference.

        Parameter-free operators (prune, prune_norm, pool, text) take any ratio; conv takes the
        ratios of its trained window, the resampler its trained query count; a gate (select /
        mix) only the trained one (same mode, same operators). Nothing is copied: the result
        shares this compressor's weights."""
        mine, problems = self.config, []
        if "conv" in config.operators:
            if "conv" not in mine.operators:
                problems.append("conv is not among this compressor's trained operators")
            elif window(config.ratio("conv")) != self.conv.s:
                s = self.conv.s
                problems.append(
                    f"conv was trained with a {s} x {s} window (ratio {mine.ratio('conv'):g}); "
                    f"it takes ratios r with ceil(sqrt(r)) = {s}, got {config.ratio('conv'):g}"
                )
        if "resampler" in config.operators:
            if "resampler" not in mine.operators:
                problems.append("the resampler is not among this compressor's trained operators")
            elif config.queries != mine.queries:
                problems.append(
                    f"the resampler was trained with {mine.queries} queries, got {config.queries}"
                )
        gated = config.mode in ("select", "mix")
        if gated and (config.mode, config.operators) != (mine.mode, mine.operators):
            problems.append(
                f"the gate was trained for mode {mine.mode!r} over {list(mine.operators)}; a "
                f"forced setting is mode 'fixed' (one operator) or 'concat', got {config.mode!r} "
                f"over {list(config.operators)}"
            )
        if problems:
            raise InputError("cannot force this compressor setting: " + "; ".join(problems))
        return ElasticCompressor(config, self.hidden_size, trained=self).train(self.training)

    def gate_logits(self, feature: torch.Tensor) -> torch.Tensor:
        """(d,) the target's feature at the last prompt token -> (K,) one logit per operator."""
        return self.gate(feature.to(self.gate.weight.dtype)).float()

    def operator(
        self, op: str, x: torch.Tensor, grid: tuple[int, int, int], count: int | None = None
    ) -> tuple[torch.Tensor, Pair]:
        """One operator on one span: x (P, d) -> tokens (m, d) and how to pair features.

        count: how many tokens pruning keeps (the mix mode matches the pool count)."""
        P = x.shape[0]
        if op in ("prune", "prune_norm"):
            m = count or prune_count(P, self.config.ratio(op))
            keep = random_keep(P, m, self.config.seed) if op == "prune" else norm_keep(x, m)
            keep = keep.to(x.device)
            return x[keep], lambda f: f[keep]  # (m, d)
        if op in ("pool", "conv"):
            s = window(self.config.ratio(op))
            tokens = grid_pool(x, grid, s) if op == "pool" else self.conv(x, grid)
            return tokens, lambda f: grid_pool(f, grid, s)
        if op == "resampler":
            tokens, attn = self.resampler(x)  # (q, d), (q, P)
            return tokens, lambda f: attn.to(f.dtype) @ f
        assert op == "text", op
        return x[:0], lambda f: f[:0]  # (0, d)

    def _span(
        self,
        x: torch.Tensor,
        grid: tuple[int, int, int],
        ops: tuple[str, ...],
        weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Pair]:
        """The mode's combination of `ops` on one span; weights (len(ops),) blend (mix) or scale
        the one chosen (select, straight-through); None: concatenate (concat, fixed, argmax)."""
        if self.config.mode == "mix":  # one count for all: pruning keeps as many as pool has
            count = pooled_count(grid, window(self.config.ratio(ops[0])))
            outs = [self.operator(op, x, grid, count) for op in ops]
            mixed = list(zip(weights, outs, strict=True))  # (weight, (tokens, pair)) per operator

            def blend(f: torch.Tensor) -> torch.Tensor:  # (P, d) -> (m, d)
                return sum(w.to(f.dtype) * pair(f) for w, (_, pair) in mixed)

            return sum(w.to(x.dtype) * t for w, (t, _) in mixed), blend
        outs = [self.operator(op, x, grid) for op in ops]
        scale = None if weights is None else weights[0]  # select, training: the ST weight (1.0)

        def paired(f: torch.Tensor) -> torch.Tensor:  # (P, d) -> (sum m, d)
            rows = torch.cat([pair(f) for _, pair in outs])
            return rows if scale is None else rows * scale.to(f.dtype)

        tokens = torch.cat([t for t, _ in outs])  # (sum m, d)
        return (tokens if scale is None else tokens * scale.to(x.dtype)), paired

    def _choose(
        self, gate_feature: torch.Tensor | None, gumbel: torch.Tensor | None
    ) -> tuple[tuple[str, ...], torch.Tensor | None, str | None]:
        """Which operators run and their weights: (ops, weights or None, gate's choice)."""
        cfg = self.config
        if cfg.mode in ("fixed", "concat"):
            return cfg.operators, None, None
        if gate_feature is None:
            raise InputError(f"compressor mode {cfg.mode!r} needs the gate's feature")
        logits = self.gate_logits(gate_feature)  # (K,)
        if cfg.mode == "mix":
            weights = torch.softmax(logits, -1)  # (K,)
            return cfg.operators, weights, cfg.operators[int(weights.argmax())]
        if not self.training:  # select at inference: argmax, exact values
            k = int(logits.argmax())
            return (cfg.operators[k],), None, cfg.operators[k]
        if gumbel is None:
            u = torch.rand_like(logits).clamp_(1e-10, 1.0)
            gumbel = -torch.log(-torch.log(u))
        soft = torch.softmax((logits + gumbel.to(logits)) / cfg.gumbel_tau, -1)  # (K,)
        k = int(soft.argmax())
        hard = 1.0 - soft[k].detach() + soft[k]  # 1.0, with the soft weight's gradient
        return (cfg.operators[k],), hard[None], cfg.operators[k]

    def forward(
        self,
        embeds: torch.Tensor,
        features: tuple[torch.Tensor, ...],
        layout: VisualLayout,
        gate_feature: torch.Tensor | None = None,
        gumbel: torch.Tensor | None = None,
    ) -> Compressed:
        """embeds, features[i] (S, d) over a sequence -> the draft's rows (S', d).

        gate_feature (d,): the target's feature at the last prompt token (select / mix);
        gumbel (K,): Gumbel noise for select in training (sampled here when None)."""
        S, device = embeds.shape[0], embeds.device
        positions = torch.arange(S, device=device)
        if not layout.spans:
            return Compressed(embeds, tuple(features), positions)
        ops, weights, choice = self._choose(gate_feature, gumbel)
        dtype = next(self.parameters(), embeds).dtype
        rows_e: list[torch.Tensor] = []
        rows_f: list[list[torch.Tensor]] = [[] for _ in features]
        source: list[torch.Tensor] = []
        at = 0
        for span in layout.spans:
            end = span.start + span.length
            if span.start < at or end > S:
                raise InputError(f"visual span {span} does not fit a sequence of {S} rows")
            rows_e.append(embeds[at : span.start].to(dtype))  # text before the image
            for rows, f in zip(rows_f, features, strict=True):
                rows.append(f[at : span.start])
            source.append(positions[at : span.start])
            tokens, pair = self._span(embeds[span.start : end].to(dtype), span.grid, ops, weights)
            rows_e.append(tokens)  # (m, d)
            for rows, f in zip(rows_f, features, strict=True):
                rows.append(pair(f[span.start : end]))  # (m, d)
            source.append(torch.full((tokens.shape[0],), -1, device=device))
            at = end
        rows_e.append(embeds[at:].to(dtype))
        for rows, f in zip(rows_f, features, strict=True):
            rows.append(f[at:])
        source.append(positions[at:])
        return Compressed(
            embeds=torch.cat(rows_e),  # (S', d)
            features=tuple(torch.cat(rows) for rows in rows_f),  # each (S', d)
            source=torch.cat(source),  # (S',)
            choice=choice,
        )
