"""Where does a world target go wrong on "where is the X?"? (Not a test.)

For test scenes with two or more objects, asks one position question (`qa_image.q_position`,
its own random stream) and answers it greedily; each wrong answer is classed by the region it
names: no region at all, a region no object is in, or another object's region, and then by
which objects hold that region (the first / last in reading order, the largest, one of the
same colour or shape as the object asked about: classes that can overlap, counted once per
answer when any object in that region fits).

Run:  python scripts/world_position_errors.py [--model FOLDER] [--n 200] [--show 10]
      (default model: the embedded target)
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from specvlm import api
from specvlm.world import grammar, qa_image
from specvlm.world.scenes import render
from specvlm.world.splits import split_spec, world_sample

REGION_WORDS = {"top", "upper", "bottom", "lower", "left", "right", "middle", "center", "centre"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="target folder (default: the embedded one)")
    ap.add_argument("--n", type=int, default=200, help="test scenes to try (default 200)")
    ap.add_argument("--show", type=int, default=10, help="print this many wrong answers")
    args = ap.parse_args()
    engine = api.load(target=args.model) if args.model else api.load()
    size = engine.target.processor.image_processor.crop_size["height"]
    pairs = split_spec("test").pairs
    tally: collections.Counter[str] = collections.Counter()
    wrong_by: collections.Counter[str] = collections.Counter()
    shown = 0
    for i in range(args.n):
        scene = world_sample("test", i, "image")
        if len(scene.objects) < 2:
            continue
        qa = qa_image.q_position(qa_image.Facts(scene, pairs), np.random.default_rng(1000 + i))
        if qa is None:
            continue
        out = engine.generate(
            qa.question, images=[render(scene, size)], max_new_tokens=30, speculative=False
        )
        true, got = qa.meta["answer"], grammar.text_region(out.text.lower())
        asked = scene.objects[qa.meta["obj"]]
        others = [o for o in scene.objects if o is not asked]
        holders = [o for o in others if grammar.region(o.x, o.y) == got]
        if grammar.check_answer(qa.meta, out.text):
            tally["right"] += 1
            continue
        if not set(out.text.lower().replace(".", " ").split()) & REGION_WORDS:
            tally["no region named"] += 1  # text_region reads that as "center"
        elif holders:
            tally["another object's region"] += 1
            order = sorted(scene.objects, key=qa_image.reading_order)
            largest = max(scene.objects, key=lambda o: o.radius)
            wrong_by["first in reading order"] += any(o is order[0] for o in holders)
            wrong_by["last in reading order"] += any(o is order[-1] for o in holders)
            wrong_by["largest"] += any(o is largest for o in holders)
            wrong_by["same colour"] += any(o.color == asked.color for o in holders)
            wrong_by["same shape"] += any(o.shape == asked.shape for o in holders)
        else:
            tally["a region with no object"] += 1
        if shown < args.show:
            print(
                f"{len(scene.objects)} objects | {qa.question} | {out.text.strip()} | truth: {true}"
            )
            shown += 1
    total = sum(tally.values())
    print(f"\n{total} questions: " + ", ".join(f"{k} {v}" for k, v in tally.most_common()))
    print(
        "wrong answers naming another object's region, that object is: "
        + ", ".join(f"{k} {v}" for k, v in wrong_by.most_common())
    )


if __name__ == "__main__":
    main()
