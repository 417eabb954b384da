"""A quick, small-scale fit of an EagleVLM head to a target's own greedy outputs.

Used by the tests and the stand-in demo to get a draft that agrees with the target often.
It applies the project's distillation loss (soft cross-entropy on the target's logits plus
Smooth L1 on its features, answer tokens only) with the target's features computed on the fly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specvlm.decoding.tree import DraftTree
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.draft.vocab import count_tokens, top_n_map
from specvlm.target import Target, load_target
from specvlm.target.base import Prompt
from specvlm.train.distill import TrainConfig, distill_loss


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
    prompts: list[tuple] | None = None,
    new_tokens: int = 96,
    steps: int = 150,
    lr: float = 3e-3,
    seed: int = 0,
    draft_vocab: int = 0,
) -> EagleHead:
    """Fit a fresh head on the target's greedy answers to a few prompts; save it to out_dir.

    prompts: (text, images) pairs, or (text, images, video) for a target that reads video.
    draft_vocab N > 0: a reduced draft vocabulary, the N ids those answers use most."""
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
    sequences, answers = [], []
    for text, images, *video in prompts:
        media = {"video": video[0]} if video and video[0] is not None else {}
        prepared = target.prepare(text, images, **media)
        out = engine.generate(
            text, images=images, max_new_tokens=new_tokens, speculative=False, **media
        )
        features, embeds = target_sequence(target, prepared, out.token_ids)
        sequences.append((features, embeds, prepared.input_ids.shape[0]))
        answers.append(out.token_ids)
    d2t = None
    if draft_vocab:
        d2t = top_n_map(count_tokens(answers, target.info.vocab_size), draft_vocab)
    config = EagleConfig.for_target(
        target.info, num_attention_heads=2, draft_vocab_size=draft_vocab
    )
    head = EagleHead(config, d2t)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(steps):
        features, embeds, answer_from = sequences[step % len(sequences)]
        mask = torch.arange(features.shape[0]) >= answer_from  # (S,) answer positions
        loss, _, _ = distill_loss(head, target, features, embeds, mask, TrainConfig())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
    head.eval()
    head.save(out_dir)
    return head
