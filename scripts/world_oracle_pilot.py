"""Oracle pilot: how fast can the world target's decoder learn to answer from perfect perception?

Trains the LLaVA stage of `--config` from scratch for `--minutes`, on the same cached data and
schedule as `specvlm world train-target`, but with the projector's output replaced by what the
alignment loss aims at: at each object's centre patch the exact sum of the decoder's word
embeddings naming it (" red", " star", " small", " top", " left"), and the `<image>` embedding
row at every other patch. Then answers the test split's questions (greedy) with the same oracle
image tokens and scores them as `specvlm world eval-target` does. If this stays far below the
bar, the decoder's training budget, not the vision tower, is what limits the target.

Run:  python scripts/world_oracle_pilot.py runs/world-target3 --minutes 15 [--n 100]
(OUT must hold `tokenizer/` and, to skip building it, the data cache of a train-target run.)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from transformers import AutoTokenizer

    from specvlm.world import train_target as tt
    from specvlm.world.evaluate import evaluate_model, format_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a train-target output folder (tokenizer, data cache)")
    ap.add_argument("--config", default="small")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--n", type=int, default=100, help="test scenes to evaluate")
    ap.add_argument(
        "--drill-turns",
        type=int,
        default=0,
        help="drills in the data (0: as measured in docs/world.md)",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = replace(tt.CONFIGS[args.config], drill_turns=args.drill_turns)
    tokenizer = AutoTokenizer.from_pretrained(str(args.out / "tokenizer"))
    model = tt.build_model(cfg, tokenizer)
    data = tt.cached_data(cfg, tokenizer, args.out, progress=True)
    embed = model.get_input_embeddings()
    blank_id = tokenizer.convert_tokens_to_ids("<image>")
    current: dict[str, torch.Tensor] = {}  # patch words of the batch being run

    def oracle(_module, _args, output):
        return tt.word_targets(current["words"], embed, blank_id)[0].to(output.dtype)

    model.model.multi_modal_projector.register_forward_hook(oracle)
    opt = tt.make_optimizer(cfg, model)
    lengths = np.array([len(s) for s in data["ids"]])
    qa = np.array([f in ("conversation", "multiturn") for f in data["family"]])
    repeats = np.where(qa, cfg.qa_repeats, 1)
    per_epoch = math.ceil(int(repeats.sum()) / cfg.batch_size)
    budget = 60.0 * args.minutes
    model.train()
    t0, step, ema = time.perf_counter(), 0, None
    while time.perf_counter() - t0 < budget:
        epoch = step // per_epoch
        if step % per_epoch == 0:
            order = tt.batch_order(lengths, cfg.batch_size, cfg.seed, epoch, repeats)
        idx = order[step % per_epoch]
        batch = tt.collate(
            data, idx, tokenizer.pad_token_id, tokenizer.bos_token_id, (idx + epoch) % 2 == 1
        )
        current["words"] = batch["patch_words"]
        lr = tt.lr_at(cfg, step, (time.perf_counter() - t0) / budget)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
            loss = tt.answer_loss(logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0:
            print(
                f"step {step} loss {ema:.3f} {(time.perf_counter() - t0) / 60:.1f} min", flush=True
            )

    model.eval()
    processor = tt.build_processor(cfg, tokenizer)
    processor.tokenizer.padding_side = "left"
    grid = cfg.image_size // cfg.patch_size

    def oracle_words(scenes):
        current["words"] = torch.stack(
            [torch.from_numpy(tt.patch_words(sc, grid, tokenizer)).long() for sc in scenes]
        )

    r = evaluate_model(model, processor, "test", args.n, before_batch=oracle_words, progress=False)
    print(f"oracle pilot: {step} steps in {args.minutes:g} min")
    print(format_report({"model": "oracle decoder", **r}))


if __name__ == "__main__":
    main()
