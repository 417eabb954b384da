"""The procedural world: scenes, clips, event streams, their language, and the world tokenizer.

See docs/world.md. Modules: scenes, clips, events, splits, grammar, qa_image, qa_clip, language,
dataset, tokenizer, cli (`register(subparsers)` adds `specvlm world ...`).
"""
