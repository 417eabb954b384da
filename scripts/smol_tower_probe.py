"""Can the vision tower, trained beside the projector on the band-words alignment loss, carry
an object's band (which fifth of the canvas), where the frozen tower gives it to ~80%?

    python scripts/smol_tower_probe.py TRAIN_SCENES TEST_SCENES STEPS TOWER_LRS
    python scripts/smol_tower_probe.py 2000 400 800 0,3e-4,1e-3      # 0: the tower frozen

Starts from the shipped world-smol projector (`src/specvlm/assets/world-smol`) and the base's
tower; for each tower learning rate, trains the projector (lr 1e-3) and the tower on the
alignment loss with band words (`smol_patch_words(..., band_words=True)`, the region's scale)
for STEPS steps of 64 train images, and prints four times along the way what the projector's
output at each test object's centre patch says, read as the nearest of each word set by dot
product: the x band and the y band (`smol.band_word_ids`), the colour word, the shape word.
The reading is the one `scripts/smol_band_probe.py` uses for the projector.
"""

from __future__ import annotations

import copy
import sys
import time

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


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    n_train, n_test, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tower_lrs = [float(v) for v in sys.argv[4].split(",")]
    _, model, tok = load_base()

    def tid(w: str) -> int:
        return tok.encode(" " + w, add_special_tokens=False)[0]

    def scenes(split: str, n: int):
        """normalised pixels (n, 3, 128, 128), band-word patch targets (n, 64, 9), and per
        object (scene, patch, x band, y band, colour id, shape id), the front one per patch."""
        imgs, words, objs = [], [], []
        for i in range(n):
            s = world_sample(split, i, "image")
            imgs.append(np.asarray(render(s, 128)))
            words.append(smol_patch_words(s, 8, tok, True, True))
            front = {r * 8 + c: o for r, c, o in centre_patches(s, 8)}
            objs += [(i, p, band(o.x), band(o.y), tid(o.color), tid(o.shape))
                     for p, o in front.items()]  # fmt: skip
        pixels = normalize(torch.from_numpy(np.stack(imgs)))
        return pixels, torch.from_numpy(np.stack(words)).long(), torch.tensor(objs)

    t0 = time.time()
    px_tr, w_tr, o_tr = scenes("train", n_train)
    px_te, w_te, o_te = scenes("test", n_test)
    print(f"data {time.time() - t0:.0f}s; {len(o_tr)} / {len(o_te)} objects", flush=True)
    E = model.get_input_embeddings().weight.detach()
    bands = {a: torch.stack([E[ids].sum(0) for ids in v]) for a, v in band_word_ids(tok).items()}
    colours, shapes = sorted(set(o_tr[:, 4].tolist())), sorted(set(o_tr[:, 5].tolist()))
    y_colour = torch.tensor([colours.index(c) for c in o_te[:, 4].tolist()])
    y_shape = torch.tensor([shapes.index(c) for c in o_te[:, 5].tolist()])
    tensors = load_file("src/specvlm/assets/world-smol/model.safetensors")
    proj0 = copy.deepcopy(model.model.multi_modal_projector)
    proj0.load_state_dict({k.removeprefix("projector."): v.float()
                           for k, v in tensors.items() if k.startswith("projector.")})  # fmt: skip
    tower0 = copy.deepcopy(model.model.vision_tower)
    cfg = SMOL_CONFIGS["smol"]
    embed = model.get_input_embeddings()

    def read(tower, proj) -> str:
        model.model.vision_tower = tower
        with torch.no_grad():
            out = torch.cat([proj(vision_features(model, px_te[k : k + 128]))
                             for k in range(0, len(px_te), 128)])  # fmt: skip
            out = out[o_te[:, 0], o_te[:, 1]]  # (objects, d)
            got = [((out @ bands[a].T).argmax(-1) == o_te[:, c]).float().mean().item()
                   for a, c in (("x", 2), ("y", 3))]  # fmt: skip
            got += [((out @ E[colours].T).argmax(-1) == y_colour).float().mean().item(),
                    ((out @ E[shapes].T).argmax(-1) == y_shape).float().mean().item()]  # fmt: skip
        return " ".join(
            f"{n} {v:.3f}" for n, v in zip(("x", "y", "colour", "shape"), got, strict=True)
        )

    print("shipped v9:", read(tower0, proj0), flush=True)
    for tower_lr in tower_lrs:
        tower, proj = copy.deepcopy(tower0), copy.deepcopy(proj0)
        tower.requires_grad_(tower_lr > 0)
        groups = [{"params": list(proj.parameters()), "lr": 1e-3}]
        groups += [{"params": list(tower.parameters()), "lr": tower_lr}] if tower_lr > 0 else []
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        model.model.vision_tower = tower
        tower.train()
        g = torch.Generator().manual_seed(0)
        t0 = time.time()
        for step in range(steps):
            idx = torch.randint(len(px_tr), (64,), generator=g)
            with torch.set_grad_enabled(tower_lr > 0):
                feats = vision_features(model, px_tr[idx])  # (64, 64, Dv)
            loss = align_loss(proj(feats), w_tr[idx], embed, model.config.image_token_id,
                              cfg.align_blank_weight, cfg.region_scale, True)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % (steps // 4) == 0:
                tower.eval()
                print(f"  tower lr {tower_lr:g} step {step + 1} loss {loss.item():.4f} "
                      f"({time.time() - t0:.0f}s): {read(tower, proj)}", flush=True)  # fmt: skip
                tower.train()


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
