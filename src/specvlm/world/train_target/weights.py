"""Per-token weights of the answer loss, read from a recipe's rows (`ids`, `masks`, `family`).

    weigh_answers(data, tokenizer, letter_weight=2.0, verdict_weight=3.0, name="smol")
    # data["token_weights"]: per row (L,) float or None; `data.collate` lays them on the batch

The multiple-choice answer's option letter (`mc_letter_positions`: the image recipes since v5,
the video recipe since its v7) and every answer's verdict, its words after the last ", so "
(`verdict_weights`, smol v13), found in the decoded answer text and mapped back to the token
that holds the character (`_token_at`), so any tokenizer works: SmolLM2's and the world's.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from specvlm.world.grammar import option_letter_at


def mc_letter_positions(data: dict, tokenizer) -> torch.Tensor:
    """(N,) int64: per row of `data`, the position of the option letter a multiple-choice answer
    gives (`grammar.option_letter`: the "B" of "B. ...", "(B) ...", "Red, so the answer is B."
    or "Red: option (B)."): the answer token whose text covers that letter's character; -1 in
    other rows and where no token does."""
    out = torch.full((len(data["ids"]),), -1, dtype=torch.long)
    for k, family in enumerate(data["family"]):
        if family != "multiple_choice":
            continue
        answer = np.flatnonzero(data["masks"][k].numpy())
        ids = [int(t) for t in data["ids"][k][answer[0] : answer[-1] + 1]]
        found = option_letter_at(tokenizer.decode(ids))
        if found is None:
            continue
        letter, at = found
        j = _token_at(ids, tokenizer, at)
        if letter in tokenizer.decode([ids[j]]):
            out[k] = int(answer[0]) + j
    return out


def letter_weights(data: dict, tokenizer, weight: float) -> list[torch.Tensor | None]:
    """Per row of `data`: (L,) answer-loss weights, `weight` at the multiple-choice answer's
    option letter (`mc_letter_positions`) and 1 elsewhere; None for the other rows."""
    out: list[torch.Tensor | None] = []
    for k, pos in enumerate(mc_letter_positions(data, tokenizer).tolist()):
        w = None
        if pos >= 0:
            w = torch.ones(len(data["ids"][k]))  # (L,)
            w[pos] = weight
        out.append(w)
    return out


VERDICT_MARK = ", so "  # what comes before an answer's verdict (`qa_image`: facts first)


def _token_at(ids: list[int], tokenizer, char: int) -> int:
    """The index of the token of `ids` whose text holds character `char` of their decoded text
    (each token decoded alone and the lengths summed where that gives the whole text's length;
    prefix decodes otherwise)."""
    ends = np.cumsum([len(tokenizer.decode([t])) for t in ids]).tolist()
    if ends[-1] != len(tokenizer.decode(ids)):
        ends = [len(tokenizer.decode(ids[: j + 1])) for j in range(len(ids))]
    return next(j for j, e in enumerate(ends) if e > char)


def verdict_weights(data: dict, tokenizer, weight: float) -> list[torch.Tensor | None]:
    """Per row of `data`: (L,) answer-loss weights, `weight` on each answer's verdict (from the
    token that holds the first character after the answer's last ", so " to the answer's end)
    and 1 elsewhere; None where no answer of the row has a verdict, and for the text rows. A
    row's answers are its runs of answer tokens (`masks`): a multiturn row has one per turn."""
    out: list[torch.Tensor | None] = []
    for k, family in enumerate(data["family"]):
        mask = data["masks"][k].numpy().astype(np.int8)  # (L,)
        w = torch.ones(len(mask))  # (L,)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))  # runs' [start, end)
        for start, end in zip(edges[0::2], edges[1::2], strict=True):
            if family == "text":
                break
            ids = [int(t) for t in data["ids"][k][start:end]]
            at = tokenizer.decode(ids).rfind(VERDICT_MARK)
            if at >= 0:  # from the verdict's first character's token (SmolLM2's " the" holds
                # the space before it too) to the answer's end
                w[start + _token_at(ids, tokenizer, at + len(VERDICT_MARK)) : end] = weight
        out.append(w if bool((w != 1).any()) else None)
    return out


def combine_weights(*rows: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Per row, the product of the given per-row weights (None: all 1), None where all are."""
    out = []
    for ws in zip(*rows, strict=True):
        given = [w for w in ws if w is not None]
        out.append(None if not given else torch.stack(given).prod(0))
    return out


def weigh_answers(
    data: dict, tokenizer, letter_weight: float, verdict_weight: float, name: str
) -> None:
    """Set `data["token_weights"]` to the product of the letter and verdict weights (those not
    1), and say how many rows each found; leave `data` as it is when both are 1."""
    weighted = []
    if letter_weight != 1.0:
        weighted.append(letter_weights(data, tokenizer, letter_weight))
        found = sum(w is not None for w in weighted[-1])
        n_mc = sum(f == "multiple_choice" for f in data["family"])
        print(f"{name}: {found} of {n_mc} multiple-choice answers' letters weighted "
              f"{letter_weight:g}x", file=sys.stderr)  # fmt: skip
    if verdict_weight != 1.0:
        weighted.append(verdict_weights(data, tokenizer, verdict_weight))
        found = sum(w is not None for w in weighted[-1])
        print(f"{name}: {found} of {len(data['ids'])} rows' verdicts weighted "
              f"{verdict_weight:g}x", file=sys.stderr)  # fmt: skip
    if weighted:
        data["token_weights"] = combine_weights(*weighted)
