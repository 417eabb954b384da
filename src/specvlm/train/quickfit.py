"""A quick, small-scale fit of an EagleVLM head to a target's own greedy outputs.

Used by the tests and the stand-in demo to get a draft that agrees with the target often.
It applies the project's distillation loss (soft cross-entropy on the target's logits plus
Smooth L1 on its features, answer tokens only) with the target's features computed on the fly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from specvlm.decoding.tree import DraftTree
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.kv_cache import KVCache
from specvlm.target import Target, load_target
from specvlm.target.base import Prompt


def distill_loss(
    head: EagleHead,
    target: Target,
    features: torch.Tensor,
    embeds: torch.Tensor,
    answer_from: int,
    w_logit: float = 0.1,
    w_feat: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """Teacher-forced loss on one sequence. features, embeds (S, d) from the target.

    Draft row i reads (f_i, e_{i+1}) and predicts f_{i+1}; rows predicting positions
    >= answer_from (the answer) count. Returns (loss, top-1 agreement with the target).
    """
    S = features.shape[0]
    cfg = head.config
    cache = KVCache(1, cfg.num_key_value_heads, cfg.head_dim, S, dtype=features.dtype)
    pred = head(features[:-1], embeds[1:], torch.arange(S - 1), cache, "causal")  # (S-1, d)
    rows = slice(answer_from - 1, S - 1)  # predictions of answer positions
    want = features[1:][rows]  # (n, d)
    with torch.no_grad():
        p = torch.softmax(target.lm_head(want).float(), -1)  # (n, V) target distribution
    logq = torch.log_softmax(target.lm_head(pred[rows]).float(), -1)  # (n, V)
    loss = w_logit * -(p * logq).sum(-1).mean() + w_feat * F.smooth_l1_loss(pred[rows], want)
    agree = (logq.argmax(-1) == p.argmax(-1)).float().mean().item()
    return loss, agree


def target_sequence(
    target: Target, prompt: Prompt, answer: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's features and input embeddings over prompt + answer, (S, d) each.

    The prompt is prefilled (images included); the answer is read as a chain in one verify
    forward, so answer tokens are always embedded as text, whatever their ids.
    """
    T, n = prompt.input_ids.shape[0], len(answer)
    pre = target.prefill(prompt, capacity=T + n)
    chain = DraftTree.from_parents(answer, [-1] + list(range(n - 1)))
    out = target.verify(chain.tokens, chain.depths, chain.mask)
    features = torch.cat([pre.features, out.features]).clone()  # (T + n, d)
    embeds = torch.cat([pre.embeds, target.embed(chain.tokens)]).detach().clone()
    return features, embeds


def fit_head_to_target(
    target_dir: str | Path,
    out_dir: str | Path,
    *,
    prompts: list[tuple[str, list]] | None = None,
    new_tokens: int = 96,
    steps: int = 150,
    lr: float = 3e-3,
    seed: int = 0,
) -> EagleHead:
    """Fit a fresh head on the target's greedy answers to a few prompts; save it to out_dir."""
    from PIL import Image

    from specvlm.api import Engine

    torch.manual_seed(seed)
    target = load_target(target_dir)
    if prompts is None:
        gen = torch.Generator().manual_seed(seed)
        prompts = []
        for i in range(4):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8)
            prompts.append(
                (f"describe the image in detail. {i}", [Image.fromarray(pixels.numpy())])
            )
    engine = Engine(target, None)
    sequences = []
    for text, images in prompts:
        prepared = target.prepare(text, images)
        out = engine.generate(text, images=images, max_new_tokens=new_tokens, speculative=False)
        features, embeds = target_sequence(target, prepared, out.token_ids)
        sequences.append((features, embeds, prepared.input_ids.shape[0]))
    head = EagleHead(EagleConfig.for_target(target.info, num_attention_heads=2))
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(steps):
        features, embeds, answer_from = sequences[step % len(sequences)]
        loss, _ = distill_loss(head, target, features, embeds, answer_from)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
    head.eval()
    head.save(out_dir)
    return head
