"""How well can the world-smol projector say an object's band (which fifth of the canvas along
x and along y), and how much does the band-words alignment target (`--band-words`) teach it?

    python scripts/smol_band_probe.py [--delta src/specvlm/assets/world-smol] [--train 3000]

1. From the frozen vision tower's features at an object's centre patch (train scenes fit, test
   scenes scored): a linear probe and a one-hidden-layer probe of the band, beside a linear probe
   of the patch's index alone (what a reader that knows only which patch holds the centre gets).
2. The delta's projector output at the centre patch, decoded as the band whose words' summed
   SmolLM2 embeddings (`smol.band_word_ids`) have the largest dot product with it: as shipped,
   then after the alignment loss with band words for (a) as many images and at the learning rate
   that a 70-minute stage 2 gives it (400 steps of 7 images, lr 2e-4) and (b) a stage-1-like
   refresh (500 steps of 64 images, lr 1e-3).
Prints one line per probe (accuracy on the test scenes' objects).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from safetensors.torch import load_file

from specvlm.world.qa_image import band
from specvlm.world.scenes import render
from specvlm.world.splits import world_sample
from specvlm.world.train_target.losses import align_loss
from specvlm.world.train_target.model import normalize, vision_features
from specvlm.world.train_target.patches import centre_patches
from specvlm.world.train_target.smol import (
    SMOL_CONFIGS,
    band_word_ids,
    load_base,
    smol_patch_words,
)


def scenes(model, tokenizer, split: str, n: int):
    """Tower features (n, 64, Dv), band-word patch targets (n, 64, 9) and per object
    (scene, patch, x band, y band), the front one where two centres share a patch (the one
    the alignment target names)."""
    images, words, objects = [], [], []
    for i in range(n):
        s = world_sample(split, i, "image")
        images.append(np.asarray(render(s, 128)))
        words.append(smol_patch_words(s, 8, tokenizer, True, True))
        front = {r * 8 + c: o for r, c, o in centre_patches(s, 8)}  # back to front: the front one
        objects += [(i, p, band(o.x), band(o.y)) for p, o in front.items()]
    pixels = torch.from_numpy(np.stack(images))
    with torch.no_grad():
        feats = torch.cat([vision_features(model, normalize(pixels[k : k + 256]))
                           for k in range(0, n, 256)])  # fmt: skip
    return feats, torch.from_numpy(np.stack(words)).long(), torch.tensor(objects)


def fit(x_tr, y_tr, x_te, y_te, hidden: int = 0, steps: int = 1500) -> float:
    torch.manual_seed(0)
    d = x_tr.shape[1]
    net = (torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 5))
           if hidden else torch.nn.Linear(d, 5))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 1e-3 if hidden else 1e-2)
    for _ in range(steps):
        idx = torch.randint(len(x_tr), (512,))
        loss = torch.nn.functional.cross_entropy(net(x_tr[idx]), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (net(x_te).argmax(-1) == y_te).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--delta", default="src/specvlm/assets/world-smol")
    p.add_argument("--train", type=int, default=3000, help="train scenes")
    p.add_argument("--test", type=int, default=500, help="test scenes")
    args = p.parse_args()
    torch.manual_seed(0)
    _, model, tok = load_base()
    tensors = load_file(f"{args.delta}/model.safetensors")
    tower = {
        k.removeprefix("tower."): v.float() for k, v in tensors.items() if k.startswith("tower.")
    }
    if tower:  # a delta trained with --train-tower: its tower's features, not the base's
        model.model.vision_tower.load_state_dict(tower)
    f_tr, w_tr, o_tr = scenes(model, tok, "train", args.train)
    f_te, w_te, o_te = scenes(model, tok, "test", args.test)
    print(f"{len(o_tr)} train objects, {len(o_te)} test objects")

    # 1. what the tower's features hold
    x_tr, x_te = f_tr[o_tr[:, 0], o_tr[:, 1]].float(), f_te[o_te[:, 0], o_te[:, 1]].float()
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    p_tr = torch.nn.functional.one_hot(o_tr[:, 1], 64).float()
    p_te = torch.nn.functional.one_hot(o_te[:, 1], 64).float()
    for axis, col in (("x", 2), ("y", 3)):
        y_tr, y_te = o_tr[:, col], o_te[:, col]
        print(f"{axis} band: patch index alone, linear {fit(p_tr, y_tr, p_te, y_te):.3f}; "
              f"tower features, linear {fit(x_tr, y_tr, x_te, y_te):.3f}, "
              f"one hidden layer of 576 {fit(x_tr, y_tr, x_te, y_te, hidden=576):.3f}")  # fmt: skip

    # 2. the projector's output, read as band words
    projector = model.model.multi_modal_projector
    projector.load_state_dict({k.removeprefix("projector."): v.float()
                               for k, v in tensors.items() if k.startswith("projector.")})  # fmt: skip
    embed = model.get_input_embeddings()
    E = embed.weight.detach()
    cfg = SMOL_CONFIGS["smol"]
    bands = {a: torch.stack([E[ids].sum(0) for ids in v]) for a, v in band_word_ids(tok).items()}

    def read(proj) -> tuple[float, float]:
        with torch.no_grad():
            out = proj(f_te)[o_te[:, 0], o_te[:, 1]]  # (n, d)
        return tuple(
            ((out @ bands[a].T).argmax(-1) == o_te[:, col]).float().mean().item()
            for a, col in (("x", 2), ("y", 3))
        )

    x, y = read(projector)
    print(f"projector of {args.delta}: x {x:.3f}, y {y:.3f}")
    for name, steps, batch, lr in (("stage-2 share", 400, 7, 2e-4), ("refresh", 500, 64, 1e-3)):
        proj = copy.deepcopy(projector)
        opt = torch.optim.AdamW(proj.parameters(), lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(len(f_tr), (batch,), generator=g)
            loss = align_loss(proj(f_tr[idx]), w_tr[idx], embed, model.config.image_token_id,
                              cfg.align_blank_weight, cfg.region_scale, True)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        x, y = read(proj)
        print(f"after {name} ({steps} steps of {batch} images, lr {lr:g}): x {x:.3f}, y {y:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
