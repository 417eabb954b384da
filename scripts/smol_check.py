"""Check the assembled world-smol LLaVA (issue 20): it loads in plain `transformers` and in this
engine, and text-only greedy output is identical token for token across three decoders.

    python scripts/smol_check.py                      # cache under $SPECVLM_CACHE
    python scripts/smol_check.py --dtype bfloat16 --tokens 48

For each prompt: this engine's plain decoding (`specvlm.load(target=folder)`, no draft),
`transformers`' `generate(do_sample=False)` on the same folder (AutoModelForImageTextToText +
AutoProcessor), and SmolLM2 itself (the converted language-model folder, AutoModelForCausalLM
with its own chat template). Then one world image through both LLaVA paths (the projector is
untrained, so the text is not meaningful; the point is that both paths agree).
Prints the timings of the two cached builds (seconds; ~0 when they were already cached).
"""

from __future__ import annotations

import argparse
import time

import torch

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
]


def divergence(model, prompt_ids, ours, theirs, decode) -> str:
    """Where two greedy continuations part, and how close `model`'s top two logits were there."""
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    ids = torch.cat([prompt_ids, torch.tensor(theirs[:k])])[None]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = logits.topk(2)
    return (
        f"first difference at new token {k}: engine {decode([ours[k]])!r}, hf {decode([theirs[k]])!r}; "
        f"hf's top-2 margin there {float(top.values[0] - top.values[1]):.4f} "
        f"({decode([int(top.indices[0])])!r} vs {decode([int(top.indices[1])])!r})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gguf", default=None, help="a SmolLM2 GGUF (default: the wheel's)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    import specvlm
    from specvlm import smol
    from specvlm.hf_quiet import quiet_transformers
    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    t = time.perf_counter()
    lm_folder = smol.smol_lm_folder(args.gguf)
    t_lm = time.perf_counter() - t
    t = time.perf_counter()
    folder = smol.world_smol_folder(args.gguf)
    print(
        f"lm folder {lm_folder} ({t_lm:.1f} s); world-smol {folder} ({time.perf_counter() - t:.1f} s)"
    )

    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    with quiet_transformers():
        hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
        processor = AutoProcessor.from_pretrained(folder)
        smol_lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=dtype).eval()
        smol_tok = processor.tokenizer.__class__.from_pretrained(lm_folder)
    engine = specvlm.load(target=folder, dtype=dtype)
    target = engine.target
    print(f"image token id {target.image_token_id}; eos {target.info.eos_token_ids}")

    def hf_generate(model, ids, pixels=None) -> list[int]:
        kw = {"pixel_values": pixels} if pixels is not None else {}
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids[None],
                attention_mask=torch.ones_like(ids[None]),
                max_new_tokens=args.tokens,
                do_sample=False,
                **kw,
            )
        return out[0, ids.shape[0] :].tolist()

    ok = True
    for prompt in PROMPTS:
        ours = engine.generate(prompt, max_new_tokens=args.tokens, speculative=False).token_ids
        prepared = target.prepare(prompt, [])
        theirs = hf_generate(hf, prepared.input_ids)
        plain = smol_tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"][0]
        same_prompt = plain.tolist() == prepared.input_ids.tolist()
        smol_out = hf_generate(smol_lm, plain)
        agree = ours == theirs[: len(ours)]
        as_smol = theirs[: len(smol_out)] == smol_out
        ok &= agree and as_smol and same_prompt
        print(
            f"\n{prompt!r}: engine == hf-llava: {agree}; hf-llava == smollm2: {as_smol} "
            f"(same prompt ids: {same_prompt}, {len(ours)} tokens)\n  -> {target.decode(ours)!r}"
        )
        if not agree:
            print("  " + divergence(hf, prepared.input_ids, ours, theirs, target.decode))
        if not as_smol:
            k = next(i for i, (a, b) in enumerate(zip(theirs, smol_out, strict=False)) if a != b)
            print(f"  smollm2 differs from token {k}: {target.decode(smol_out[k:])!r}")

    image = render(world_sample("test", 0), size=128)
    prompt = "What shapes are in the image?"
    ours = engine.generate(prompt, images=[image], max_new_tokens=args.tokens, speculative=False)
    prepared = target.prepare(prompt, [image])
    n_visual = int((prepared.input_ids == target.image_token_id).sum())
    theirs = hf_generate(hf, prepared.input_ids, prepared.pixel_values)
    agree = ours.token_ids == theirs[: len(ours.token_ids)]
    ok &= agree
    print(
        f"\nimage prompt ({n_visual} visual tokens, {prepared.input_ids.shape[0]} prompt tokens): "
        f"engine == hf-llava: {agree}\n  -> {ours.text!r}"
    )
    print("\nALL IDENTICAL" if ok else "\nMISMATCH")


if __name__ == "__main__":
    main()
