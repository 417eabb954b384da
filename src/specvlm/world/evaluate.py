"""Score a world target on held-out scenes: closed questions, descriptions, answer entropy.

    specvlm world eval-target --model runs/world-target/model --split test --n 200
    evaluate_target("src/specvlm/assets/world-target", "hard", n=200)   # -> dict of numbers

For each of `n` scenes of the split (kind image):
- closed questions: the question of the `conversation` record and the first question of the
  `multiturn` record, answered greedily and scored with `grammar.check_answer`; accuracy per
  question type and over count, color, position and yes/no (exists, relation, corner);
- descriptions: the `detailed` record's prompt, answered greedily; coverage is the fraction of
  scenes whose description names every object (`grammar.mentions`, colour and shape), also by
  the number of objects in the scene; each object left out is counted as "wrong colour" (its
  shape named with another colour) or "not named";
- entropy: the mean, over every generated answer token, of the entropy (nats) of the model's
  next-token distribution at temperature 1 along the greedy answer.

Generation is plain `transformers` `generate` (batched, left padding), in float32.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.world import grammar
from specvlm.world.language import make_record
from specvlm.world.scenes import Scene, render
from specvlm.world.splits import SPLITS, check_split, world_sample

# Question types of the headline closed-question accuracy, by group.
CLOSED_GROUPS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "color": ("color",),
    "position": ("position",),
    "yes/no": ("exists", "relation", "corner"),
}


def load(folder: str | Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"--model: {folder} is not a model folder (no config.json)")
    hf_logging.set_verbosity_error()
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    processor.tokenizer.padding_side = "left"
    return model, processor


@torch.no_grad()
def answer(
    model, processor, items: list[tuple[str, object]], max_new_tokens: int
) -> list[tuple[str, list[float]]]:
    """Greedy answers to (question, image) pairs, with each answer token's entropy at T=1."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q, _ in items
    ]
    enc = processor(
        text=texts,
        images=[im for _, im in items],
        return_tensors="pt",
        padding=True,
        add_special_tokens=True,  # the tokenizer adds <s>; the chat template does not
    )
    out = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, S) generated ids
    logits = torch.stack(out.logits, dim=1).float()  # (B, S, V) raw logits, before processors
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, S)
    eos = processor.tokenizer.eos_token_id
    results = []
    for b in range(new.shape[0]):
        ids = new[b].tolist()
        n = ids.index(eos) + 1 if eos in ids else len(ids)  # answer tokens, </s> included
        text = processor.tokenizer.decode(ids[: n - (eos in ids)], skip_special_tokens=True)
        results.append((text.strip(), entropy[b, :n].tolist()))
    return results


def evaluate_target(
    model_dir: str | Path,
    split: str = "test",
    n: int = 200,
    batch_size: int = 16,
    max_description_tokens: int = 360,
    progress: bool = True,
) -> dict:
    """Closed-question accuracy (per type and headline), description coverage, mean entropy."""
    check_split(split)
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    torch.set_num_threads(2)
    model, processor = load(model_dir)
    r = evaluate_model(model, processor, split, n, batch_size, max_description_tokens, progress)
    return {"model": str(model_dir), **r}


def evaluate_model(
    model,
    processor,
    split: str = "test",
    n: int = 200,
    batch_size: int = 16,
    max_description_tokens: int = 360,
    progress: bool = True,
    before_batch: Callable[[list[Scene]], None] | None = None,
) -> dict:
    """`evaluate_target` on a loaded model (the processor's tokenizer padding on the left);
    `before_batch(scenes)` is called with each batch's scenes before it is answered."""
    size = processor.image_processor.crop_size["height"]
    closed: list[tuple[dict, str, object, Scene]] = []  # (meta, question, image, scene)
    describe: list[tuple[dict, str, object, Scene]] = []
    for i in range(n):
        scene = world_sample(split, i, "image")
        assert isinstance(scene, Scene)
        image = render(scene, size)
        for family in ("conversation", "multiturn"):
            rec = make_record(split, i, family)
            meta = rec["meta"]["turns"][0] if family == "multiturn" else rec["meta"]
            if meta.get("answer") is not None:
                closed.append((meta, _question(rec), image, scene))
        rec = make_record(split, i, "detailed")
        describe.append((rec["meta"], _question(rec), image, scene))

    right: dict[str, list[bool]] = defaultdict(list)
    entropies: list[float] = []
    examples: list[dict] = []
    jobs = [("closed", closed, 40), ("describe", describe, max_description_tokens)]
    total = sum(math.ceil(len(items) / batch_size) for _, items, _ in jobs)
    bar = tqdm(total=total, desc=f"eval {split}", unit="batch", disable=not progress)
    covered: list[bool] = []
    by_count: dict[int, list[bool]] = defaultdict(list)  # objects in the scene -> covered
    position_by_count: dict[int, list[bool]] = defaultdict(list)  # objects -> position right
    missed = {"not named": 0, "wrong colour": 0}  # objects a description left out
    for job, items, max_new in jobs:
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            if before_batch is not None:
                before_batch([scene for *_, scene in chunk])
            outs = answer(model, processor, [(q, im) for _, q, im, _ in chunk], max_new)
            for (meta, q, _, scene), (text, ent) in zip(chunk, outs, strict=True):
                entropies += ent
                if job == "closed":
                    ok = bool(grammar.check_answer(meta, text))
                    right[meta["qtype"]].append(ok)
                    if meta["qtype"] == "position":
                        position_by_count[len(scene.objects)].append(ok)
                else:
                    names = [o.split() for o in meta["objects"]]
                    named = [grammar.mentions(text, color, shape) for color, shape in names]
                    ok = all(named)
                    covered.append(ok)
                    by_count[len(names)].append(ok)
                    for (_, shape), hit in zip(names, named, strict=True):
                        if not hit:  # its shape named with another colour, or not at all
                            wrong = grammar.mentions(text, None, shape)
                            missed["wrong colour" if wrong else "not named"] += 1
                if len(examples) < 6 or (not ok and len(examples) < 12):
                    examples.append({"question": q, "answer": text, "ok": ok})
            bar.update(1)
    bar.close()
    per_type = {t: sum(v) / len(v) for t, v in sorted(right.items())}
    groups = {g: [ok for t in ts for ok in right.get(t, [])] for g, ts in CLOSED_GROUPS.items()}
    headline = [ok for v in groups.values() for ok in v]
    return {
        "split": split,
        "n": n,
        "closed_accuracy": sum(headline) / max(len(headline), 1),
        "closed_count": len(headline),
        "closed_groups": {
            g: (sum(v) / len(v) if v else float("nan"), len(v)) for g, v in groups.items()
        },
        "per_type": {t: (acc, len(right[t])) for t, acc in per_type.items()},
        "position_by_objects": {
            k: (sum(v) / len(v), len(v)) for k, v in sorted(position_by_count.items())
        },
        "description_coverage": sum(covered) / max(len(covered), 1),
        "description_by_objects": {
            k: (sum(v) / len(v), len(v)) for k, v in sorted(by_count.items())
        },
        "description_missed": missed,
        "mean_entropy": sum(entropies) / max(len(entropies), 1),
        "examples": examples,
    }


def _question(record: dict) -> str:
    return record["conversations"][0]["value"].removeprefix("<image>\n")


def format_report(r: dict) -> str:
    lines = [
        f"{r['model']}  split {r['split']}  n {r['n']}",
        f"closed questions: {100 * r['closed_accuracy']:.1f}% of {r['closed_count']}",
    ]
    for g, (acc, k) in r["closed_groups"].items():
        lines.append(f"  {g:<10} {100 * acc:5.1f}%  ({k})")
    lines.append(
        "per question type: "
        + ", ".join(f"{t} {100 * a:.0f}% ({k})" for t, (a, k) in r["per_type"].items())
    )
    if r.get("position_by_objects"):
        lines.append(
            "  position by objects in the scene: "
            + ", ".join(
                f"{k}: {100 * a:.0f}% ({m})" for k, (a, m) in r["position_by_objects"].items()
            )
        )
    lines.append(f"descriptions naming every object: {100 * r['description_coverage']:.1f}%")
    lines.append(
        "  by objects in the scene: "
        + ", ".join(
            f"{k}: {100 * a:.0f}% ({m})" for k, (a, m) in r["description_by_objects"].items()
        )
    )
    lines.append(
        "  objects left out: " + ", ".join(f"{k} {v}" for k, v in r["description_missed"].items())
    )
    lines.append(f"mean answer-token entropy at T=1: {r['mean_entropy']:.3f} nats")
    for ex in r["examples"][:8]:
        mark = "ok " if ex["ok"] else "BAD"
        lines.append(f"  [{mark}] {ex['question'][:70]!r} -> {ex['answer'][:160]!r}")
    return "\n".join(lines)


__all__ = ["CLOSED_GROUPS", "SPLITS", "evaluate_model", "evaluate_target", "format_report"]
