"""Does the world-smol target still answer text-only prompts as SmolLM2 does? (Not a test.)

    python scripts/smol_text_prompts.py --target T [--tokens 48]

Five general prompts that the training run never saw (none is among
`train_target.smol.TEXT_PROMPTS`, whose SmolLM2 answers were training rows), answered greedily
in float32 by SmolLM2-135M-Instruct itself (the converted language-model folder, its own chat
template, `transformers`' generate) and by the trained target (this engine, plain decoding,
text only). Prints both answers per prompt and whether they are the same text.
"""

from __future__ import annotations

import argparse

import torch

HELD_OUT = [
    "What is the largest ocean on Earth?",
    "Give me two tips for staying warm in winter.",
    "Write one sentence about a dog playing in a park.",
    "What is 8 plus 6?",
    "Name two famous painters.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="the world-smol target folder")
    p.add_argument("--tokens", type=int, default=48)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import specvlm
    from specvlm.hf_quiet import quiet_transformers
    from specvlm.smol import smol_lm_folder
    from specvlm.world.train_target.smol import TEXT_PROMPTS

    assert not set(HELD_OUT) & set(TEXT_PROMPTS)
    lm_dir = smol_lm_folder()
    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(lm_dir)
    engine = specvlm.load(target=args.target, draft=None, dtype="float32")
    same = 0
    for prompt in HELD_OUT:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with torch.inference_mode():
            out = lm.generate(ids, max_new_tokens=args.tokens, do_sample=False)
        base = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        ours = engine.generate(
            [{"role": "user", "content": prompt}], max_new_tokens=args.tokens, speculative=False
        ).text.strip()
        same += base == ours
        print(f"Q: {prompt}\n  SmolLM2: {base!r}\n  target:  {ours!r}\n", flush=True)
    print(f"same text on {same}/{len(HELD_OUT)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
