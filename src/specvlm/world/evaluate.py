"""Score a world target on held-out scenes: closed questions of every family, descriptions, entropy.

    specvlm world eval-target --target src/specvlm/assets/world-target --split test --n 200 \
        --out eval-test.json
    evaluate_target("src/specvlm/assets/world-target", "hard", n=100)   # -> dict of numbers

For scene i < n of the split (kind image), each family's record of that scene (`make_record`)
is asked greedily, as a user would ask it (the target's own chat template), and scored:

- conversation: `grammar.check_answer` on the whole answer (the first number, yes/no, colour,
  shape, object or region it names must be the record's short answer), or for an answer that
  gives its facts first (meta "conclusion") on the part after its last ", so ";
- multiple_choice: by its letter only: `mc_letter` (the option letter the answer opens with, as
  "B", "B.", "B)", "B:", "(B)"; failing that the first "(B)", "answer is B", "option B" in it:
  the world's reference answers name the option first, "Red, so the answer is B. ...") must
  be the record's letter. Whether the text after the letter names the right option
  (`mc_content`) is reported beside it, as a diagnostic, not scored;
- reasoning: by its verdict (`verdict`), scored by `check_answer`. The world's image reasoning
  answers give their facts first and decide last ("The red circle is small, while the blue
  square is large. ..., so the blue square is larger."): their verdict is the sentence part after
  the last ", so ". When an answer has no such part, or that part gives no answer of the
  question's kind (a model trained on the older, verdict-first wording: "The blue square is
  larger. It covers ..."), the verdict is the first sentence (up to the first ". ", "? " or
  "! "). A right value only in the explanation does not count;
- multiturn: every turn k, asked after the record's reference questions and answers of turns
  1..k-1 (as benchmarks do, so one wrong answer does not spoil the turns after it), each turn by
  its own rule (reasoning questions by their verdict); reported per turn;
- descriptions (`detailed`): the fraction of scenes whose description names every object
  (`grammar.mentions`, colour and shape), also by the number of objects in the scene; each
  object left out is counted as "wrong colour" (its shape named with another colour) or "not
  named".

Also reported: accuracy per question type and by CLOSED_GROUPS (over every family), and the
mean, over every generated answer token, of the entropy (nats) of the model's next-token
distribution at temperature 1 along the greedy answer. Every item (question, reference, answer,
verdict) is kept in the result's "items" (`eval-target --out FILE.json` writes them).

Generation is plain `transformers` `generate` (batched, left padding), in float32, for any
LLaVA folder with a chat template (the world target's Vicuna-style one, world-smol's ChatML);
the tokenizer adds BOS only where the rendered template does not start with it.

Clips (`kind="video"`, `eval-target --kind video`, for a Video-LLaVA folder such as the world
video target): the same families and rules over clip i < n of the split, each clip read as the
checkpoint's frame count sampled uniformly; answered one at a time by this engine's plain
greedy decoding (`transformers`' video processor needs torchvision, which this project does not
install; the engine's output is `transformers`' own, `tests/test_video_llava.py`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from specvlm.errors import InputError
from specvlm.world import grammar
from specvlm.world.clips import Clip, render_clip
from specvlm.world.language import make_record
from specvlm.world.scenes import Scene, render
from specvlm.world.splits import SPLITS, check_split, world_sample

# Question types of the per-group accuracy, by group.
CLOSED_GROUPS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "color": ("color",),
    "position": ("position",),
    "yes/no": ("exists", "relation", "corner"),
}
# The reasoning family's question types (qa_image.REASONING), scored by their verdict sentence,
# in the reasoning family and in multiturn turns alike.
IMAGE_REASONING_QTYPES = frozenset(
    {"compare_size", "closest", "extreme", "occlusion", "compare_count", "arithmetic", "edge"}
)
# qa_clip.REASONING's (count_moving is also a clip conversation question: its first sentence is
# its whole answer there, so the verdict rule scores it the same)
CLIP_REASONING_QTYPES = frozenset(
    {"why_turn", "faster", "why_gone", "end_count", "still", "count_moving"}
)
REASONING_QTYPES = IMAGE_REASONING_QTYPES | CLIP_REASONING_QTYPES
# How the text after a multiple-choice letter is checked against the right option (diagnostic).
MC_CONTENT_KIND = {
    "mc_count": "number",
    "mc_color": "color",
    "mc_shape": "shape",
    "mc_position": "region",
    "mc_present": "object",
    "mc_absent": "object",
    "mc_direction": "direction",
    "mc_count_moving": "number",
    "mc_new_color": "color",
    "mc_leaves": "object",
    "mc_appears": "object",
}
CLOSED_FAMILIES = ("conversation", "multiple_choice", "reasoning", "multiturn")
CLOSED_TOKENS = 48  # new tokens for a closed answer that comes first ...
REASONING_TOKENS = 128  # ... and for a reasoning one, or any whose facts come before its verdict

# The letter an answer gives: `grammar.option_letter` (also what `check_answer` reads for "letter").
mc_letter = grammar.option_letter


def mc_content(meta: dict, text: str) -> bool:
    """Does the answer, its opening letter removed, name the right option's content? (For an
    answer that gives its facts before its letter, meta["conclusion"]: is the last object or
    number it names before the letter the right option?)"""
    kind = MC_CONTENT_KIND[meta["qtype"]]
    if meta.get("conclusion") and kind in ("object", "number"):
        at = grammar.option_letter_at(text)
        head = text[: at[1]] if at else text
        if kind == "number":
            return grammar.last_number(head) == int(meta["answer_text"])
        obj = grammar.last_object(head)
        return obj is not None and " ".join(x for x in obj[1:] if x) == meta["answer_text"]
    rest = re.sub(grammar.LETTER_START + r"\s*", "", text, count=1)
    return bool(grammar.check_answer({"answer": meta["answer_text"], "answer_kind": kind}, rest))


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def verdict(text: str, meta: dict | None = None) -> str:
    """The part of a reasoning answer that decides it. For questions whose reference concludes
    last (meta["conclusion"]): the sentence after the last ", so ", when it gives an answer of
    meta["answer_kind"]; otherwise the first sentence (a verdict-first answer)."""
    first = _first_sentence(text)
    if not meta or not meta.get("conclusion"):
        return first
    last = grammar.conclusion(text)
    if last == text:
        return first
    last = _first_sentence(last)
    found = grammar.read_answer(meta["answer_kind"], last, meta)
    return last if found is not None else first


def score(family: str, meta: dict, text: str) -> bool:
    """Is `text` a right answer to a closed question of `family` (rules in the docstring)?"""
    if family == "multiple_choice":
        return mc_letter(text) == meta["answer"]
    if family == "reasoning" or meta["qtype"] in REASONING_QTYPES:
        return bool(grammar.check_answer(meta, verdict(text, meta)))
    return bool(grammar.check_answer(meta, text))


def chat_messages(record: dict, turns: int, kind: str = "image") -> list[dict]:
    """The record's first `turns` questions as chat messages, the reference answers between
    them; the image (the video: `kind`) goes first in the first question (as
    `train_target.chat_messages`)."""
    messages = []
    for k, turn in enumerate(record["conversations"][: 2 * turns - 1]):
        text = turn["value"].removeprefix(f"<{kind}>\n")
        content = [{"type": "text", "text": text}]
        if turn["from"] == "human" and k == 0:
            content = [{"type": kind}, *content]
        messages.append(
            {"role": "user" if turn["from"] == "human" else "assistant", "content": content}
        )
    return messages


@dataclass
class Item:
    """One question to ask: the chat up to it, and what scores the answer."""

    family: str  # conversation | multiple_choice | reasoning | multiturn | detailed
    turn: int  # 1-based (multiturn); 1 elsewhere
    index: int  # the scene's index within the split
    meta: dict  # the question's meta: qtype, answer, answer_kind (objects for descriptions)
    messages: list[dict]
    reference: str  # the record's answer
    image: object  # a PIL image, or a clip's sampled frames
    scene: Scene | Clip

    @property
    def n_objects(self) -> int:
        return len(self.scene.objects) if isinstance(self.scene, Scene) else len(self.scene.tracks)

    @property
    def row(self) -> str:
        return f"multiturn turn {self.turn}" if self.family == "multiturn" else self.family


def make_items(
    split: str, n: int, size: int, kind: str = "image", num_frames: int = 8
) -> tuple[list[Item], list[Item]]:
    """(closed questions of every family, description prompts) for scenes (kind "video":
    clips, `num_frames` frames sampled uniformly) 0..n-1."""
    from specvlm.media import sample_frame_indices

    closed: list[Item] = []
    describe: list[Item] = []
    for i in range(n):
        scene = world_sample(split, i, kind)
        if isinstance(scene, Scene):
            image: object = render(scene, size)
        else:
            frames = render_clip(scene, size)
            image = [frames[j] for j in sample_frame_indices(len(frames), num_frames)]
        for family in (*CLOSED_FAMILIES, "detailed"):
            rec = make_record(split, i, family, kind=kind)
            metas = rec["meta"]["turns"] if family == "multiturn" else [rec["meta"]]
            for k, meta in enumerate(metas, start=1):
                reference = rec["conversations"][2 * k - 1]["value"]
                messages = chat_messages(rec, k, kind)
                item = Item(family, k, i, meta, messages, reference, image, scene)
                if family == "detailed":
                    describe.append(item)
                elif meta.get("answer") is not None:
                    closed.append(item)
    order = {r: j for j, r in enumerate(CLOSED_FAMILIES)}
    closed.sort(key=lambda it: (order[it.family], it.turn))  # batch alike prompts together
    return closed, describe


def load(folder: str | Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"--target: {folder} is not a model folder (no config.json)")
    hf_logging.set_verbosity_error()
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    processor.tokenizer.padding_side = "left"
    return model, processor


@torch.no_grad()
def answer(
    model, processor, items: list[tuple[list[dict], object]], max_new_tokens: int
) -> list[tuple[str, list[float]]]:
    """Greedy answers to (chat messages, image) pairs, with each answer token's entropy at T=1."""
    texts = [
        processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        for m, _ in items
    ]
    bos = processor.tokenizer.bos_token
    enc = processor(
        text=texts,
        images=[im for _, im in items],
        return_tensors="pt",
        padding=True,
        # llava-hf convention: the tokenizer adds <s> unless the template wrote it (ChatML has none)
        add_special_tokens=not (bos and texts[0].startswith(bos)),
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
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos]) | {processor.tokenizer.eos_token_id}
    results = []
    for b in range(new.shape[0]):
        ids = new[b].tolist()
        end = next((j for j, t in enumerate(ids) if t in stops), None)
        n = len(ids) if end is None else end + 1  # answer tokens, the stop token included
        text = processor.tokenizer.decode(
            ids[: n if end is None else end], skip_special_tokens=True
        )
        results.append((text.strip(), entropy[b, :n].tolist()))
    return results


def evaluate_target(
    model_dir: str | Path,
    split: str = "test",
    n: int = 200,
    batch_size: int = 16,
    max_description_tokens: int = 360,
    progress: bool = True,
    threads: int = 2,
    kind: str = "image",
) -> dict:
    """Per-family closed-question accuracy, description coverage, mean entropy, every item.
    kind "video": clips, for a Video-LLaVA folder (`evaluate_video`)."""
    check_split(split)
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if kind not in ("image", "video"):
        raise InputError(f"--kind {kind!r}: accepted: image, video")
    from specvlm.world.train_target.run import torch_threads

    # on a 2-core box that other work shares, 2 threads thrash: 1 thread ran 20x faster there
    with torch_threads(threads):
        if kind == "video":
            r = evaluate_video(model_dir, split, n, max_description_tokens, progress)
        else:
            model, processor = load(model_dir)
            r = evaluate_model(
                model, processor, split, n, batch_size, max_description_tokens, progress
            )
    return {"model": str(model_dir), **r}


def _jobs(
    closed: list[Item], describe: list[Item], max_description_tokens: int
) -> tuple[list[Item], list[tuple[list[int], int]]]:
    """All items (closed, then descriptions) and their positions grouped by token budget: short
    closed answers, reasoning answers and every other answer whose facts come before its verdict
    (meta "conclusion"), descriptions."""
    items = closed + describe
    long = [it.meta["qtype"] in REASONING_QTYPES or bool(it.meta.get("conclusion"))
            for it in closed]  # fmt: skip
    reasoning = [k for k, is_long in enumerate(long) if is_long]
    short = [k for k, is_long in enumerate(long) if not is_long]
    described = list(range(len(closed), len(items)))
    budgets = [CLOSED_TOKENS, REASONING_TOKENS, max_description_tokens]
    return items, list(zip([short, reasoning, described], budgets, strict=True))


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
    closed, describe = make_items(split, n, processor.image_processor.crop_size["height"])
    items, jobs = _jobs(closed, describe, max_description_tokens)
    total = sum(math.ceil(len(group) / batch_size) for group, _ in jobs)
    bar = tqdm(total=total, desc=f"eval {split}", unit="batch", disable=not progress)
    records: list[dict] = [{} for _ in items]  # in the items' order
    entropies: list[float] = []
    for group, max_new in jobs:
        for s in range(0, len(group), batch_size):
            chunk = group[s : s + batch_size]
            if before_batch is not None:
                before_batch([items[k].scene for k in chunk])
            outs = answer(
                model, processor, [(items[k].messages, items[k].image) for k in chunk], max_new
            )
            for k, (text, ent) in zip(chunk, outs, strict=True):
                entropies += ent
                records[k] = _record(items[k], text)
            bar.update(1)
    bar.close()
    return {"split": split, "n": n, **summarize(records), "mean_entropy": _mean(entropies)}


def evaluate_video(
    model_dir: str | Path,
    split: str = "test",
    n: int = 200,
    max_description_tokens: int = 360,
    progress: bool = True,
) -> dict:
    """`evaluate_model` for clips: each item answered by this engine's plain greedy decoding of
    the Video-LLaVA folder (mean entropy not measured: NaN)."""
    from specvlm.api import load as load_engine
    from specvlm.target import modalities

    engine = load_engine(target=model_dir)
    if "video" not in modalities(engine.target):
        raise InputError(f"--kind video: {model_dir} does not read video (a Video-LLaVA is needed)")
    # clips are drawn at the world's 128 px; the adapter resizes frames to the checkpoint's size
    closed, describe = make_items(split, n, 128, "video", engine.target.num_frames)
    items, jobs = _jobs(closed, describe, max_description_tokens)
    bar = tqdm(total=len(items), desc=f"eval {split} clips", disable=not progress)
    records: list[dict] = [{} for _ in items]  # in the items' order
    for group, max_new in jobs:
        for k in group:
            it = items[k]
            out = engine.generate(
                it.messages, video=it.image, max_new_tokens=max_new, speculative=False
            )
            records[k] = _record(it, out.text.strip())
            bar.update(1)
    bar.close()
    return {"split": split, "n": n, "kind": "video", **summarize(records), "mean_entropy": math.nan}


def _record(it: Item, text: str) -> dict:
    """One scored item, as the JSON output lists it."""
    rec = {
        "family": it.family,
        "row": it.row,
        "turn": it.turn,
        "index": it.index,
        "objects_in_scene": it.n_objects,
        "qtype": it.meta["qtype"],
        "question": it.messages[-1]["content"][-1]["text"],
        "earlier_turns": (len(it.messages) - 1) // 2,
        "reference": it.reference,
        "answer": text,
    }
    if it.family == "detailed":
        names = [o.split() for o in it.meta["objects"]]
        named = [grammar.mentions(text, color, shape) for color, shape in names]
        rec["objects"] = it.meta["objects"]
        # each object left out: its shape named with another colour, or not at all
        rec["missed"] = {
            " ".join(cs): "wrong colour" if grammar.mentions(text, None, cs[1]) else "not named"
            for cs, hit in zip(names, named, strict=True)
            if not hit
        }
        rec["ok"] = all(named)
        return rec
    rec["expected"] = it.meta["answer"]
    rec["ok"] = score(it.family, it.meta, text)
    if it.family == "multiple_choice":
        rec["letter"] = mc_letter(text)
        rec["content_ok"] = mc_content(it.meta, text)
    return rec


def _mean(xs: list) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(records: list[dict]) -> dict:
    """The numbers of a report from the scored items (`_record`)."""
    closed = [r for r in records if r["family"] != "detailed"]
    described = [r for r in records if r["family"] == "detailed"]
    rows: dict[str, list[bool]] = {}
    for r in closed:  # in CLOSED_FAMILIES order, turns in order (make_items sorts them)
        rows.setdefault(r["row"], []).append(r["ok"])
    by_type: dict[str, list[bool]] = defaultdict(list)
    position_by_count: dict[int, list[bool]] = defaultdict(list)
    for r in closed:
        by_type[r["qtype"]].append(r["ok"])
        if r["qtype"] == "position":
            position_by_count[r["objects_in_scene"]].append(r["ok"])
    groups = {g: [ok for t in ts for ok in by_type.get(t, [])] for g, ts in CLOSED_GROUPS.items()}
    by_count: dict[int, list[bool]] = defaultdict(list)
    missed = {"not named": 0, "wrong colour": 0}
    for r in described:
        by_count[r["objects_in_scene"]].append(r["ok"])
        for why in r["missed"].values():
            missed[why] += 1
    mc = [r["content_ok"] for r in closed if r["family"] == "multiple_choice"]
    wrong = [r for r in records if not r["ok"]]
    return {
        "families": {row: (sum(v), len(v)) for row, v in rows.items()},
        "closed_accuracy": _mean([r["ok"] for r in closed]),
        "closed_count": len(closed),
        "mc_content": (sum(mc), len(mc)),
        "closed_groups": {g: (_mean(v), len(v)) for g, v in groups.items()},
        "per_type": {t: (_mean(v), len(v)) for t, v in sorted(by_type.items())},
        "position_by_objects": {
            k: (_mean(v), len(v)) for k, v in sorted(position_by_count.items())
        },
        "description_coverage": _mean([r["ok"] for r in described]),
        "description_count": len(described),
        "description_by_objects": {k: (_mean(v), len(v)) for k, v in sorted(by_count.items())},
        "description_missed": missed,
        "examples": [r for r in records if r["ok"]][:4] + wrong[:8],
        "items": records,
    }


def format_report(r: dict) -> str:
    lines = [f"{r['model']}  split {r['split']}  n {r['n']} scenes per family", ""]
    lines.append(f"{'family':<20} {'n':>5} {'right':>6} {'%':>6}")

    def row(name: str, right: int, k: int, note: str = "") -> None:
        pct = f"{100 * right / k:6.1f}" if k else f"{'-':>6}"
        lines.append(f"{name:<20} {k:>5} {right:>6} {pct}{note}")

    mc_right, mc_n = r["mc_content"]
    for name, (right, k) in r["families"].items():
        note = ""
        if name == "multiple_choice" and mc_n:
            note = f"   (by letter; content right {100 * mc_right / mc_n:.1f}%)"
        row(name.replace("_", " "), right, k, note)
    closed = sum(right for right, _ in r["families"].values())
    row("all closed questions", closed, r["closed_count"])
    covered = sum(e["ok"] for e in r["items"] if e["family"] == "detailed")
    row("descriptions", covered, r["description_count"], "   (naming every object)")
    lines.append("")
    lines.append(
        "closed groups (every family): "
        + ", ".join(f"{g} {100 * a:.1f}% ({k})" for g, (a, k) in r["closed_groups"].items() if k)
    )
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
    lines.append(
        "descriptions by objects in the scene: "
        + ", ".join(
            f"{k}: {100 * a:.0f}% ({m})" for k, (a, m) in r["description_by_objects"].items()
        )
    )
    lines.append(
        "  objects left out: " + ", ".join(f"{k} {v}" for k, v in r["description_missed"].items())
    )
    lines.append(f"mean answer-token entropy at T=1: {r['mean_entropy']:.3f} nats")
    for ex in r["examples"]:
        mark = "ok " if ex["ok"] else "BAD"
        question = ex["question"].replace("\n", " ")
        lines.append(f"  [{mark}] {ex['row']}: {question[:70]!r} -> {ex['answer'][:120]!r}")
    return "\n".join(lines)


__all__ = [
    "CLOSED_GROUPS",
    "REASONING_QTYPES",
    "SPLITS",
    "evaluate_model",
    "evaluate_target",
    "format_report",
    "mc_content",
    "mc_letter",
    "score",
    "verdict",
]
