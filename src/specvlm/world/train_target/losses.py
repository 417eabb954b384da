"""The training losses: answer tokens, patch labels (`PatchHeads`), alignment, pointer, motion.

Stage 1 trains the vision tower on `PatchHeads`' loss alone; stage 2 adds to `answer_loss` the
patch loss, `align_loss` (the projector's output at an object's centre patch pulled towards the
embeddings of the words naming it) and `pointer_loss` (one attention head pulled to the object
an answer is about), each with its weight in `TargetTrainConfig`. The video recipe can add
`MotionHead`'s loss (a language-model layer's states at each frame's patches classified by how
the object there moved since the frame before).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specvlm.world.train_target.patches import (
    MOTION_CLASSES,
    N_PATCH_WORDS,
    NOTHING_WEIGHT,
    PATCH_LABELS,
    region_codes,
)

IGNORE = -100  # label of tokens without loss


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled (answer) tokens."""
    return weighted_answer_loss(logits, labels, None)[0]


def weighted_answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to train on, plain `answer_loss`): the labelled tokens' cross-entropy, each times
    its weight in `weights` (B, T) (None: all 1), summed and divided by the number of labelled
    tokens, so a weight above 1 adds to a token's share without shrinking the others'."""
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    target = labels[:, 1:]  # (B, T-1)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
        reduction="none",
    )  # (B * (T-1),) 0 where ignored  # fmt: skip
    n = (target != IGNORE).sum().clamp(min=1)
    plain = ce.sum() / n
    if weights is None:
        return plain, plain
    return (ce * weights[:, 1:].reshape(-1)).sum() / n, plain


def answer_kl(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) at the labelled positions, averaged over them: logits and teacher
    (B, T, V), labels (B, T) with IGNORE where no token is scored (position t predicts t+1,
    as in `weighted_answer_loss`); 0 (with a graph) where none is."""
    scored = labels[:, 1:] != IGNORE  # (B, T-1)
    if not bool(scored.any()):
        return logits.sum() * 0.0
    log_q = F.log_softmax(logits[:, :-1][scored].float(), -1)  # (n, V) the model
    log_p = F.log_softmax(teacher[:, :-1][scored].float(), -1)  # (n, V) the teacher
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


class PatchHeads(torch.nn.Module):
    """Linear classifiers over the vision features the projector reads (training only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.heads = torch.nn.ModuleDict(
            {k: torch.nn.Linear(dim, n) for k, n in PATCH_LABELS.items()}
        )

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, P, D), labels (B, len(PATCH_LABELS), P) -> (mean CE, per-patch accuracy of
        the occupied patches' labels over all heads)."""
        h = self.norm(feats.float())
        losses, right, count = [], 0, 0
        for k, head in enumerate(self.heads.values()):
            logits = head(h)  # (B, P, n)
            y = labels[:, k]  # (B, P)
            weight = torch.ones(logits.shape[-1], device=logits.device)
            weight[0] = NOTHING_WEIGHT  # most patches show nothing; keep them from dominating
            flat = logits.reshape(-1, logits.shape[-1]).float()  # (B * P, n)
            losses.append(F.cross_entropy(flat, y.reshape(-1), weight=weight))
            occupied = y > 0
            right += int((logits.argmax(-1) == y)[occupied].sum())
            count += int(occupied.sum())
        return torch.stack(losses).mean(), torch.tensor(right / max(count, 1))


class MotionHead(torch.nn.Module):
    """A linear classifier of a language-model layer's states at the frames' patch tokens into
    MOTION_CLASSES (training only, never saved with the model). The states it reads can see
    the earlier frames (causal attention), so they can learn where each object was before."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.linear = torch.nn.Linear(dim, len(MOTION_CLASSES))

    def forward(
        self, states: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, F, P, d), labels (B, F, P) (-1: ignored) -> (cross-entropy, with "nothing"
        weighted NOTHING_WEIGHT; accuracy over the patches an object covers)."""
        logits = self.linear(self.norm(states.float()))  # (B, F, P, n)
        weight = torch.ones(len(MOTION_CLASSES), device=logits.device)
        weight[0] = NOTHING_WEIGHT  # most patches show nothing
        flat = logits.reshape(-1, logits.shape[-1])  # (B * F * P, n)
        y = labels.reshape(-1)
        if not bool((y >= 0).any()):
            return flat.sum() * 0.0, torch.tensor(float("nan"))
        loss = F.cross_entropy(flat, y, weight=weight, ignore_index=-1)
        covered = y > 0
        right = (flat.argmax(-1) == y)[covered].float()
        return loss, right.mean() if len(right) else torch.tensor(float("nan"))


def word_targets(
    words: torch.Tensor,
    embed: torch.nn.Embedding,
    blank_id: int | None = None,
    region_scale: float = 1.0,
    region_words: bool = False,
    band_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the projector should output: words (B, P, W) from `patch_words` (W <= N_PATCH_WORDS:
    token ids only; W = N_PATCH_SLOTS: the region too; 0 = none) -> (targets (B, P, d): the
    summed (detached) embeddings of each patch's words, plus the region: `region_scale` times
    their mean norm along each of its region codes, or with `region_words` (every slot after
    the N_PATCH_WORDS then holds the token id of a place word: the region's " top" / " left",
    and with the smol recipe's band words four more, " far" " left" " above" " centre")
    `region_scale` times those words' summed embeddings (a word in both, such as " left",
    counts twice); or, where a patch has no words and `blank_id` is given, that token's
    embedding row (else zeros); named (B, P) bool: the patch has words). `band_scale` (None:
    `region_scale`) scales the band words, the slots after the region's two."""
    E = embed.weight.detach()
    ids = words[..., :N_PATCH_WORDS]  # (B, P, w)
    has = ids > 0
    vecs = E[ids] * has[..., None]  # (B, P, w, d)
    target = vecs.sum(2)  # (B, P, d)
    named = has.any(-1)  # (B, P)
    if words.shape[-1] > N_PATCH_WORDS and region_words:
        rid = words[..., N_PATCH_WORDS:]  # (B, P, 2 or 2 + 4) token ids, 0 = none
        scale = torch.full((rid.shape[-1],), float(region_scale), device=E.device, dtype=E.dtype)
        scale[2:] = region_scale if band_scale is None else band_scale  # (2 or 6,)
        target = target + (E[rid] * (rid > 0)[..., None] * scale[:, None]).sum(2)
    elif words.shape[-1] > N_PATCH_WORDS:
        table = region_codes(E.shape[-1]).to(E.device, E.dtype)  # (1 + N_REGION_CODES, d)
        codes = table[words[..., N_PATCH_WORDS:]].sum(2)  # (B, P, d)
        size = vecs.norm(dim=-1).sum(2) / has.sum(2).clamp_min(1)  # (B, P) mean word norm
        target = target + region_scale * size[..., None] * codes
    if blank_id is not None:
        target = torch.where(named[..., None], target, E[blank_id].expand_as(target))
    return target, named


def align_loss(
    projected: torch.Tensor,
    words: torch.Tensor,
    embed: torch.nn.Embedding,
    blank_id: int | None = None,
    blank_weight: float = 0.0,
    region_scale: float = 1.0,
    region_words: bool = False,
    band_scale: float | None = None,
) -> torch.Tensor:
    """projected (B, P, d) projector output; words (B, P, W) as `word_targets` reads them.
    Mean squared distance to `word_targets` (detached) over patches with words,
    relative to the targets' mean squared norm; plus, if `blank_id` is given, `blank_weight`
    times the same distance of every other patch to the (detached) embedding of `blank_id`, so
    that patches holding no object's centre all read alike and are easy to ignore."""
    target, named = word_targets(words, embed, blank_id, region_scale, region_words, band_scale)
    sq = (projected.float() - target.float()).pow(2).sum(-1)  # (B, P)
    norm = target.float().pow(2).sum(-1)  # (B, P)
    loss = projected.sum() * 0.0
    if named.any():
        loss = loss + sq[named].mean() / norm[named].mean().clamp_min(1e-8)
    if blank_id is not None and blank_weight > 0 and (~named).any():
        loss = loss + blank_weight * sq[~named].mean() / norm[~named].mean().clamp_min(1e-8)
    return loss


def pointer_loss(attention: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    """attention (B, T, T) one head's weights, pointer (B, T) key per query (-1: none) -> mean
    cross-entropy -log a[b, t, pointer[b, t]] over the queries that have one (0 if none)."""
    rows = pointer >= 0  # (B, T)
    if not rows.any():
        return attention.sum() * 0.0
    b, t = rows.nonzero(as_tuple=True)
    picked = attention[b, t, pointer[b, t]].float()  # (Q,)
    return -(picked + 1e-6).log().mean()
