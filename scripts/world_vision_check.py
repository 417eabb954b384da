"""How well a world-target checkpoint's vision tower sees objects, on held-out scenes.

Reads `OUT/checkpoint.pt` of `specvlm world train-target` (the model and its patch heads) and,
for scenes of a split, reports:
  - per object: the share of objects whose centre patch the centre heads label with the right
    colour AND shape (objects whose centre patch belongs to a front object are skipped);
  - with the region head (checkpoints since run 6): the share whose region it gets right;
  - false positives: patches the centre-colour head marks as holding an object's centre when
    none does, per object in the scenes;
  - for the projector: the cosine between its output at centre patches and the summed word
    embeddings the alignment loss aims at, and the mean norm of the other patches' outputs;
  - what the projector's output says, slot by slot: for each object's centre patch and each
    slot (colour, shape, size, region), the alternative target (the true one with that slot
    swapped for each other choice) nearest to the output; the share of objects where it is the
    true one. The region slot reads the region codes of run 7 on; checkpoints of runs 4-6
    aimed at the region's words instead (this script at commit 0b140bc checks those).

Run:  python scripts/world_vision_check.py runs/world-target4 [--split test] [--n 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from transformers import AutoTokenizer

    from specvlm.world import train_target as tt
    from specvlm.world.scenes import COLORS, SHAPES, SIZES, render
    from specvlm.world.splits import world_sample

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a train-target output folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)

    ckpt = torch.load(args.out / "checkpoint.pt", weights_only=False)
    # region_scale: 0.6 for checkpoints written before the field existed
    cfg = tt.TargetTrainConfig(**{"region_scale": 0.6, **ckpt["config"]})
    tokenizer = AutoTokenizer.from_pretrained(str(args.out / "tokenizer"))
    model = tt.build_model(cfg, tokenizer)
    heads = tt.PatchHeads(cfg.vision_hidden)
    missing, unexpected = torch.nn.ModuleDict({"model": model, "heads": heads}).load_state_dict(
        ckpt["model"], strict=False
    )
    if unexpected or any(not k.startswith("heads.heads.center_region") for k in missing):
        raise SystemExit(
            f"{args.out}: checkpoint does not fit: missing {missing}, unexpected {unexpected}"
        )
    # (checkpoints from before the region head lack only that head, which this script never reads)
    model.eval()
    grid = cfg.image_size // cfg.patch_size

    scenes = [world_sample(args.split, i, "image") for i in range(args.n)]
    images = torch.from_numpy(np.stack([np.asarray(render(s, cfg.image_size)) for s in scenes]))
    with torch.no_grad():
        feats = torch.cat(
            [
                tt.vision_features(model, tt.normalize(images[k : k + 64]))
                for k in range(0, args.n, 64)
            ]
        )
        projected = model.model.multi_modal_projector(feats).float()  # (N, P, d)
        h = heads.norm(feats.float())
        color = heads.heads["center_color"](h).argmax(-1)  # (N, P)
        shape = heads.heads["center_shape"](h).argmax(-1)
        has_region = "heads.heads.center_region.weight" in ckpt["model"]
        region_head = heads.heads["center_region"](h).argmax(-1) if has_region else None

    colors, shapes = list(COLORS), list(SHAPES)
    embed = model.get_input_embeddings()
    tid = tt.word_id(tokenizer)
    thirds = [(r, c) for r in range(3) for c in range(3)]
    # slot -> (choices, how a choice rewrites an object's slots from `tt.object_slots`)
    K = tt.N_PATCH_WORDS
    slots = {
        "colour": (list(COLORS), lambda v, ch: [tid(ch), *v[1:]]),
        "shape": (list(SHAPES), lambda v, ch: [v[0], tid(ch), *v[2:]]),
        "size": (list(SIZES), lambda v, ch: [*v[:2], tid(ch), *v[3:]]),
        "region": (thirds, lambda v, ch: [*v[:K], 1 + ch[0], 4 + ch[1]]),
    }
    hits = {k: 0 for k in slots}  # slot -> objects whose true choice is the nearest
    right = total = false_pos = n_objects = region_right = 0
    for b, scene in enumerate(scenes):
        labels = tt.patch_labels(scene, grid)
        for r, c, o in tt.centre_patches(scene, grid):
            p = r * grid + c
            if labels[2, p] != colors.index(o.color) + 1:
                continue  # another object's centre shares this patch and is in front
            total += 1
            right += int(
                color[b, p] == colors.index(o.color) + 1
                and shape[b, p] == shapes.index(o.shape) + 1
            )
            if region_head is not None:
                region_right += int(
                    region_head[b, p] == labels[list(tt.PATCH_LABELS).index("center_region"), p]
                )
            # the projector's output against each slot's alternatives, the other slots true
            true = tt.object_slots(o, tid)
            truth = {
                "colour": o.color,
                "shape": o.shape,
                "size": o.size,
                "region": tt.region_thirds(o.x, o.y),
            }
            for slot, (choices, swap) in slots.items():
                alts = torch.tensor([[swap(true, ch) for ch in choices]])  # (1, n_choices, slots)
                target = tt.word_targets(alts, embed, region_scale=cfg.region_scale)[0][0].float()
                dist = (projected[b, p] - target).norm(dim=-1)
                hits[slot] += int(choices[int(dist.argmin())] == truth[slot])
        false_pos += int(((color[b] > 0).numpy() & (labels[2] == 0)).sum())
        n_objects += len(scene.objects)

    words = torch.from_numpy(np.stack([tt.patch_words(s, grid, tokenizer) for s in scenes])).long()
    target, centre = tt.word_targets(words, embed, region_scale=cfg.region_scale)
    cos = torch.nn.functional.cosine_similarity(projected[centre], target[centre], dim=-1)
    print(f"{args.out}  split {args.split}  n {args.n}")
    print(
        f"objects with colour and shape right at the centre patch: {100 * right / total:.1f}% of {total}"
    )
    if region_head is not None:
        print(
            f"objects with the region right at the centre patch (region head): {100 * region_right / total:.1f}%"
        )
    print(f"false centre patches per object: {false_pos / n_objects:.3f}")
    print(
        f"projector at centre patches: cosine to the word sum {cos.mean():.3f}, norm {projected[centre].norm(dim=-1).mean():.2f}"
    )
    print(f"projector at other patches: norm {projected[~centre].norm(dim=-1).mean():.2f}")

    print(
        "projector output, nearest alternative per word slot: "
        + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in hits.items())
    )


if __name__ == "__main__":
    main()
