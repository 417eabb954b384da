"""The world-smol training recipe (`train_target.smol`) on the tiny GGUF of tests/test_smol.py.

A few steps of both stages on the tiny SmolLM2-shaped model: the loss goes down, a stopped run
resumes to the same weights, only the delta (projector + adapters) is saved, and the folder
assembled from the base and the delta generates what the trained model in memory generates.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from specvlm import smol
from specvlm.errors import InputError
from specvlm.world.grammar import option_letter
from specvlm.world.language import ANSWERS_VERSION
from specvlm.world.train_target.lora import LORA, PROJECTOR, add_lora, apply_delta
from specvlm.world.train_target.smol import (
    SMOL_CONFIGS,
    TEXT_PROMPTS,
    smol_patch_words,
    train_smol_target,
)
from specvlm.world.train_target.weights import (
    combine_weights,
    letter_weights,
    mc_letter_positions,
    verdict_weights,
)
from tests.test_smol import write_tiny_gguf

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
    reason="reading GGUF files needs `pip install gguf accelerate`",
)
STEPS = 12  # stage 2 (stage 1: the config's align_steps)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smol-train")
    gguf = write_tiny_gguf(root / "tiny-smol.gguf")
    return {"gguf": gguf, "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def trained(tiny) -> dict:
    out = tiny["root"] / "run"
    r = train_smol_target(
        out, "smol-tiny", steps=STEPS, progress=False, gguf=tiny["gguf"], cache=tiny["cache"]
    )
    return {"out": out, "result": r}


def test_prompts_are_distinct():
    assert len(TEXT_PROMPTS) == 250 == len(set(TEXT_PROMPTS)) == SMOL_CONFIGS["smol"].text_prompts


def test_the_loss_goes_down_in_both_stages(trained):
    r = trained["result"]
    assert r["steps"] == STEPS and r["align_steps"] == SMOL_CONFIGS["smol-tiny"].align_steps
    s1, s2 = r["stage1_losses"], r["losses"]  # alignment loss, then answer loss
    assert len(s1) == r["align_steps"] and len(s2) == STEPS
    assert np.mean(s1[-2:]) < np.mean(s1[:2])
    assert np.mean(s2[-3:]) < np.mean(s2[:3])


def test_only_the_delta_is_saved(trained):
    out = trained["out"]
    delta = out / "delta"
    assert sorted(p.name for p in delta.iterdir()) == sorted(
        [smol.DELTA_WEIGHTS, smol.DELTA_CONFIG]
    )
    from safetensors.torch import load_file

    tensors = load_file(str(delta / smol.DELTA_WEIGHTS))
    assert all(k.startswith((PROJECTOR, LORA)) for k in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    cfg = SMOL_CONFIGS["smol-tiny"]
    n_lora = sum(t.numel() for k, t in tensors.items() if k.startswith(LORA))
    d, ff, layers = 64, 128, 2  # the tiny GGUF: width 64, MLP 128, 2 layers, 2 of 4 KV heads
    per_layer = (d + d) + 2 * (d + 32) + (d + d) + 2 * (d + ff) + (ff + d)  # in + out per linear
    assert n_lora == cfg.lora_rank * per_layer * layers
    config = json.loads((delta / smol.DELTA_CONFIG).read_text())
    assert config["lora_rank"] == cfg.lora_rank and config["base"]["lm"]
    # the checkpoints hold the trained parameters only, never the frozen base
    for name in ("stage1.pt", "stage2.pt"):
        ckpt = torch.load(out / name, weights_only=False)
        assert all(k.startswith(("projector.", "lora.")) for k in ckpt["model"]), name


def test_the_assembled_folder_generates_as_the_trained_model(trained, tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    folder = smol.trained_world_smol_folder(trained["out"] / "delta", tiny["gguf"], tiny["cache"])
    assert smol.trained_world_smol_folder(trained["out"] / "delta", tiny["gguf"], tiny["cache"]) == folder  # fmt: skip
    plain = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    ours = trained["result"]["trained_model"].eval()
    image = render(world_sample("test", 0), size=128)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    with torch.inference_mode():
        a = plain.generate(**inputs, max_new_tokens=6, do_sample=False)
        b = ours.generate(**inputs, max_new_tokens=6, do_sample=False)
        la, lb = plain(**inputs).logits, ours(**inputs).logits
    assert a.tolist() == b.tolist()
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)


def test_a_stopped_run_resumes_to_the_same_delta(trained, tiny):
    out = tiny["root"] / "stopped"
    args = {"steps": STEPS, "progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    first = train_smol_target(out, "smol-tiny", stop_at=2, **args)
    assert first["model"] is None and not (out / "delta").exists()  # not finished: no delta
    with pytest.raises(Exception, match="--resume"):
        train_smol_target(out, "smol-tiny", **args)
    again = train_smol_target(out, "smol-tiny", resume=True, **args)
    assert again["steps"] == STEPS and again["losses"][:2] == first["losses"]
    a = (trained["out"] / "delta" / smol.DELTA_WEIGHTS).read_bytes()
    assert (out / "delta" / smol.DELTA_WEIGHTS).read_bytes() == a


def test_init_continues_from_a_trained_delta(trained, tiny):
    """--init DELTA: no stage 1, stage 2 starts from the delta's projector and adapters (its
    first batch, the same as the fresh run's first, has a far lower loss), the new delta.json
    names what it continued, and a delta of another adapter shape is refused."""
    from specvlm.errors import InputError

    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    delta = trained["out"] / "delta"
    out = tiny["root"] / "continued"
    r = train_smol_target(out, "smol-tiny", steps=3, init=delta, **args)
    fresh = trained["result"]["losses"]
    assert r["align_steps"] == 0 and r["stage1_losses"] == [] and r["steps"] == 3
    assert r["losses"][0] < fresh[0] - 0.5 * (fresh[0] - fresh[-1])
    config = json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())
    assert config["init"]["steps"] == STEPS and config["init"]["from"] is None
    assert config["init"]["folder"] == str(delta.resolve())
    assert config["init"]["sha256"] == smol.sha256_file(delta / smol.DELTA_WEIGHTS)
    assert config["recipe"]["region_words"] is SMOL_CONFIGS["smol-tiny"].region_words
    assert config["answers_version"] == ANSWERS_VERSION
    with pytest.raises(InputError, match="--resume continues"):
        train_smol_target(out, "smol-tiny", steps=3, init=delta, resume=True, **args)
    # stopped after one step, resumed without --init: the same delta as the run above
    stopped = tiny["root"] / "continued-stopped"
    first = train_smol_target(stopped, "smol-tiny", steps=3, init=delta, stop_at=1, **args)
    assert first["model"] is None
    again = train_smol_target(stopped, "smol-tiny", steps=3, resume=True, **args)
    assert again["losses"] == r["losses"]
    weights = (out / "delta" / smol.DELTA_WEIGHTS).read_bytes()
    assert (stopped / "delta" / smol.DELTA_WEIGHTS).read_bytes() == weights
    with pytest.raises(InputError, match="its adapters are"):
        train_smol_target(
            tiny["root"] / "r4", "smol-tiny", steps=2, init=delta, lora_rank=2, **args
        )


def test_the_letter_weight_finds_each_multiple_choice_letter(trained, tiny):
    """The run's cached data: every multiple-choice answer's key position holds its option
    letter, the one the answer gives, right after "...so the answer is" or "...: option (";
    no other row has one."""
    from transformers import AutoTokenizer

    data = torch.load(next(trained["out"].glob("data-smol-*.pt")))
    tokenizer = AutoTokenizer.from_pretrained(smol.world_smol_folder(tiny["gguf"], tiny["cache"]))
    pos = mc_letter_positions(data, tokenizer)
    mc = [k for k, f in enumerate(data["family"]) if f == "multiple_choice"]
    assert mc and all(pos[k] == -1 for k in range(len(pos)) if k not in mc)
    for k in mc:
        p = int(pos[k])
        start = int(np.flatnonzero(data["masks"][k].numpy())[0])
        before = tokenizer.decode(data["ids"][k][start:p].tolist())
        letter = tokenizer.decode([int(data["ids"][k][p])]).strip()
        assert letter in ("A", "B", "C", "D")
        assert before.rstrip().endswith((", so the answer is", ": option (")), before
        end = int(np.flatnonzero(data["masks"][k].numpy())[-1]) + 1
        answer = tokenizer.decode(data["ids"][k][start:end].tolist())
        assert option_letter(answer) == letter
    # as the run weights them: `weight` at the letter, 1 elsewhere; no weights for other rows
    weights = letter_weights(data, tokenizer, 5.0)
    for k, w in enumerate(weights):
        if k not in mc or int(pos[k]) < 0:
            assert w is None
        else:
            want = torch.ones(len(data["ids"][k]))
            want[int(pos[k])] = 5.0
            assert torch.equal(w, want)


def test_combine_weights_multiplies_the_rows_weights():
    a, b = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 3.0, 3.0])
    got = combine_weights([None, a, None, a], [None, None, b, b])
    assert got[0] is None and torch.equal(got[1], a) and torch.equal(got[2], b)
    assert torch.equal(got[3], torch.tensor([1.0, 6.0, 3.0]))


def test_the_verdict_weight_covers_each_answers_words_after_its_last_so(trained, tiny):
    """The run's cached data: in every answer that says ", so ", exactly the tokens from the
    word after its last ", so " to the answer's end are weighted (a multiturn row's answers each
    on their own); answers without one, and the text rows, are not."""
    from transformers import AutoTokenizer

    data = torch.load(next(trained["out"].glob("data-smol-*.pt")))
    tokenizer = AutoTokenizer.from_pretrained(smol.world_smol_folder(tiny["gguf"], tiny["cache"]))
    weights = verdict_weights(data, tokenizer, 3.0)
    assert len(weights) == len(data["ids"])
    seen = {"weighted": 0, "plain": 0, "multi": 0}
    for k, w in enumerate(weights):
        mask = data["masks"][k].numpy().astype(bool)
        ids = data["ids"][k].tolist()
        if data["family"][k] == "text":
            assert w is None
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        runs = list(zip(edges[0::2], edges[1::2], strict=True))
        seen["multi"] += len(runs) > 1 and w is not None
        want = torch.ones(len(ids))
        for start, end in runs:
            answer = tokenizer.decode(ids[start:end])
            if ", so " not in answer:
                seen["plain"] += 1
                continue
            verdict = answer[answer.rindex(", so ") + len(", so ") :]
            j = next(j for j in range(start, end) if verdict in tokenizer.decode(ids[j:end]) and
                     verdict not in tokenizer.decode(ids[j + 1 : end]))  # fmt: skip
            assert tokenizer.decode(ids[j:end]).strip() == verdict.strip()
            want[j:end] = 3.0
            seen["weighted"] += 1
        if w is None:
            assert torch.equal(want, torch.ones(len(ids)))
        else:
            assert torch.equal(w, want), k
    assert seen["weighted"] and seen["plain"] and seen["multi"], seen


def test_multiple_choice_weighting_is_recorded_and_kept_on_resume(trained, tiny):
    from specvlm.errors import InputError

    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    out = tiny["root"] / "mc"
    mc = {"mc_repeats": 3, "letter_weight": 4.0}
    r = train_smol_target(out, "smol-tiny", steps=2, init=trained["out"] / "delta", **mc, **args)
    assert r["steps"] == 2 and np.isfinite(r["losses"]).all()
    recipe = json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())["recipe"]
    assert recipe["mc_repeats"] == 3 and recipe["letter_weight"] == 4.0
    with pytest.raises(InputError):  # another weighting than the checkpoint's
        train_smol_target(out, "smol-tiny", steps=3, resume=True, letter_weight=2.0, **args)
    with pytest.raises(InputError):
        train_smol_target(out, "smol-tiny", steps=3, resume=True, verdict_weight=2.0, **args)
    out = tiny["root"] / "verdicts"
    r = train_smol_target(out, "smol-tiny", steps=2, init=trained["out"] / "delta",
                          verdict_weight=3.0, **args)  # fmt: skip
    assert r["steps"] == 2 and np.isfinite(r["losses"]).all()
    assert (
        json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())["recipe"]["verdict_weight"]
        == 3.0
    )


def test_band_words_continue_a_delta_trained_without_them(trained, tiny, capsys):
    """--band-words from a delta whose recipe predates the setting: the run says the setting
    differs (the old delta had the default, off), its data's alignment targets carry the band
    slots (N_PATCH_SLOTS + BAND_SLOTS), it trains and records the setting."""
    from specvlm.world.train_target.patches import N_PATCH_SLOTS
    from specvlm.world.train_target.smol import BAND_SLOTS

    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    old = tiny["root"] / "old-delta"
    shutil.copytree(trained["out"] / "delta", old)
    config = json.loads((old / smol.DELTA_CONFIG).read_text())
    del config["recipe"]["band_words"]  # as a delta written before band_words existed
    (old / smol.DELTA_CONFIG).write_text(json.dumps(config))
    out = tiny["root"] / "bands"
    capsys.readouterr()
    r = train_smol_target(out, "smol-tiny", steps=2, init=old, band_words=True, **args)
    assert "other settings of band_words ({'band_words': False})" in capsys.readouterr().err
    assert r["steps"] == 2 and np.isfinite(r["losses"]).all()
    data = torch.load(next(out.glob("data-smol-*.pt")))
    assert data["patch_words"].shape[-1] == N_PATCH_SLOTS + BAND_SLOTS
    assert (data["patch_words"][..., N_PATCH_SLOTS:] > 0).any()
    recipe = json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())["recipe"]
    assert recipe["band_words"] is True


def test_text_kl_trains_the_text_rows_towards_the_base(trained, tiny):
    """--text-kl: the KL term is computed on the batches with a text-only row (logged in the
    state), finite and positive once the adapters have moved the model off the base."""
    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    out = tiny["root"] / "text-kl"
    r = train_smol_target(
        out, "smol-tiny", steps=6, init=trained["out"] / "delta", text_kl=1.0, **args
    )
    state = torch.load(out / "stage2.pt", weights_only=False)  # its state at the top level
    kls = state.get("text_kl_losses", [])
    assert r["steps"] == 6 and kls and all(np.isfinite(kls)) and max(kls) > 0
    recipe = json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())["recipe"]
    assert recipe["text_kl"] == 1.0


def test_answer_kl_and_adapters_off():
    """answer_kl: 0 where the model is the teacher, positive elsewhere, only labelled positions
    count; adapters_off: a LoRA-wrapped model computes the base model inside the block."""
    from specvlm.world.train_target.lora import adapters_off
    from specvlm.world.train_target.losses import IGNORE, answer_kl

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.full((2, 5), IGNORE)
    assert answer_kl(a, b, labels).item() == 0.0  # nothing labelled
    labels[0, 3] = 1  # scored at position 2 (it predicts token 3)
    assert answer_kl(a, a, labels).abs().item() < 1e-6
    kl = answer_kl(a, b, labels)
    b2 = b.clone()
    b2[1] = 0.0  # an unlabelled row changes nothing
    b2[0, 4] = 0.0  # nor does an unscored position
    assert kl.item() > 0 and torch.equal(answer_kl(a, b2, labels), kl)
    p, q = b[0, 2].softmax(-1), a[0, 2].softmax(-1)
    torch.testing.assert_close(kl, (p * (p.log() - q.log())).sum())

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    base = model(input_ids=ids).logits

    class Wrapper(torch.nn.Module):  # add_lora reads model.model.language_model.layers
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.language_model = model.model

    adapters = add_lora(Wrapper(), rank=2, alpha=4.0, seed=0)
    with torch.no_grad():
        for p_ in adapters.parameters():
            p_.add_(0.5)  # B is zero at first: move it so the adapters change the output
    assert not torch.allclose(model(input_ids=ids).logits, base)
    with adapters_off(model):
        torch.testing.assert_close(model(input_ids=ids).logits, base)
    assert not torch.allclose(model(input_ids=ids).logits, base)  # scales back


def test_the_assistant_is_the_targets_first_layers_fine_tuned(trained, tiny):
    """--config smol-assistant: the target cut to its first layer; that layer, the final norm
    and the projector are trained (the loss goes down), the embeddings / LM head and the vision
    tower stay the target's; the saved folder is a plain fp16 LLaVA of one layer."""
    from transformers import AutoModelForImageTextToText

    from specvlm.errors import InputError
    from specvlm.world.train_target.smol_assistant import train_smol_assistant

    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    delta = trained["out"] / "delta"
    r = train_smol_assistant(tiny["root"] / "assistant", "smol-assistant-tiny", steps=8, init=delta, **args)  # fmt: skip
    assert r["steps"] == 8 and np.mean(r["losses"][-2:]) < np.mean(r["losses"][:2])
    small = AutoModelForImageTextToText.from_pretrained(r["model"]).eval()
    big = AutoModelForImageTextToText.from_pretrained(
        smol.trained_world_smol_folder(delta, tiny["gguf"], tiny["cache"])
    ).eval()
    assert small.dtype == torch.float16
    assert small.config.text_config.num_hidden_layers == 1
    assert len(small.model.language_model.layers) == 1 < len(big.model.language_model.layers)
    emb = small.get_input_embeddings().weight
    assert torch.equal(emb, big.get_input_embeddings().weight.half())
    assert small.lm_head.weight.data_ptr() == emb.data_ptr()  # still tied: the target's head
    for part in ("multi_modal_projector", "language_model.norm"):
        a = small.get_submodule(f"model.{part}").state_dict()
        b = big.get_submodule(f"model.{part}").state_dict()
        assert any(not torch.equal(a[k], b[k].half()) for k in a), part  # trained
    tower = dict(small.model.vision_tower.named_parameters())
    for name, w in big.model.vision_tower.named_parameters():
        assert torch.equal(tower[name], w.half()), name
    q0 = small.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q0, big.model.language_model.layers[0].self_attn.q_proj.weight.half())
    # stopped and resumed (its --init is kept in the checkpoint): the same losses
    part = tiny["root"] / "assistant-stopped"
    train_smol_assistant(part, "smol-assistant-tiny", steps=8, init=delta, stop_at=3, **args)
    with pytest.raises(InputError, match="was cut from"):
        train_smol_assistant(part, "smol-assistant-tiny", steps=8, init=part, resume=True, **args)
    rest = train_smol_assistant(part, "smol-assistant-tiny", steps=8, resume=True, **args)
    assert rest["losses"] == r["losses"]
    with pytest.raises(InputError, match="--layers must be between 1 and 1"):
        train_smol_assistant(tiny["root"] / "a2", "smol-assistant-tiny", steps=2, init=delta, assistant_layers=2, **args)  # fmt: skip
    with pytest.raises(InputError, match="assistant's recipe"):
        train_smol_target(tiny["root"] / "a3", "smol-assistant-tiny", steps=2, **args)


def test_a_fresh_adapter_changes_nothing_and_merges_exactly():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    text = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, vocab_size=50)  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=49)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    plain = LlavaForConditionalGeneration(config).eval()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 49, (1, 7))
    before = model(input_ids=ids).logits
    adapters = add_lora(model, rank=2, alpha=4.0, seed=0)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.1)
    from specvlm.world.train_target.lora import delta_tensors, round_to_fp16

    round_to_fp16(adapters)
    round_to_fp16(model.model.multi_modal_projector)
    apply_delta(plain, delta_tensors(model, adapters), 4.0 / 2)
    torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits)


def test_patch_words_name_objects_by_smollm2_tokens(tiny):
    """The alignment targets: at each object's centre patch its colour, shape and size as
    SmolLM2 ids (a word of two tokens by its first), then its region codes; 0 elsewhere."""
    from transformers import AutoTokenizer

    from specvlm.world.scenes import Scene, SceneObject

    tok = AutoTokenizer.from_pretrained(smol.world_smol_folder(tiny["gguf"], cache=tiny["cache"]))
    scene = Scene(
        objects=(
            SceneObject("hexagon", "red", "large", 0.2, 0.2, 0),
            SceneObject("star", "blue", "small", 0.9, 0.9, 1),
        )
    )
    words = smol_patch_words(scene, 8, tok)  # (64, 5)
    assert words.shape == (64, 5)
    first = lambda w: tok.encode(" " + w, add_special_tokens=False)[0]  # noqa: E731
    assert words[1 * 8 + 1].tolist() == [first("red"), first("hexagon"), first("large"), 1, 4]
    assert words[7 * 8 + 7].tolist() == [first("blue"), first("star"), first("small"), 3, 6]
    assert int((words.sum(1) > 0).sum()) == 2
    # v3: the region in SmolLM2's own words, as the grammar says it
    words = smol_patch_words(scene, 8, tok, region_words=True)
    assert words[1 * 8 + 1, 3:].tolist() == [first("top"), first("left")]
    assert words[7 * 8 + 7, 3:].tolist() == [first("bottom"), first("right")]
    middle = Scene(objects=(SceneObject("star", "blue", "small", 0.5, 0.5, 0),))
    assert smol_patch_words(middle, 8, tok, True)[4 * 8 + 4, 3:].tolist() == [first("center"), 0]
    edge = Scene(objects=(SceneObject("star", "blue", "small", 0.1, 0.5, 0),))  # "left"
    assert smol_patch_words(edge, 8, tok, True)[4 * 8 + 0, 3:].tolist() == [0, first("left")]
    # v10: the bands along x and y in the band answers' words, after the region
    words = smol_patch_words(scene, 8, tok, region_words=True, band_words=True)  # (64, 9)
    assert words.shape == (64, 9)
    assert words[1 * 8 + 1, 3:5].tolist() == [first("top"), first("left")]  # x = y = 0.2
    assert words[1 * 8 + 1, 5:].tolist() == [
        first(w) for w in ("left", "centre", "above", "centre")
    ]
    assert words[7 * 8 + 7, 5:].tolist() == [first(w) for w in ("far", "right", "very", "bottom")]
    assert smol_patch_words(middle, 8, tok, True, True)[4 * 8 + 4, 5:].tolist() == [
        first(w) for w in ("halfway", "across", "halfway", "down")
    ]
    assert int((words.sum(1) > 0).sum()) == 2
    with pytest.raises(InputError, match="band_words needs region_words"):
        smol_patch_words(scene, 8, tok, region_words=False, band_words=True)


def test_region_words_add_their_embeddings_to_the_alignment_target():
    from specvlm.world.train_target.losses import word_targets

    embed = torch.nn.Embedding(12, 4)
    words = torch.tensor([[[3, 4, 5, 7, 0], [0, 0, 0, 0, 0]]])  # (1, 2 patches, 5 slots)
    target, named = word_targets(words, embed, blank_id=1, region_scale=0.5, region_words=True)
    E = embed.weight.detach()
    torch.testing.assert_close(target[0, 0], E[3] + E[4] + E[5] + 0.5 * E[7])
    torch.testing.assert_close(target[0, 1], E[1])  # no object: the blank token
    assert named.tolist() == [[True, False]]


def test_band_words_take_their_own_scale_in_the_alignment_target():
    from specvlm.world.train_target.losses import word_targets

    embed = torch.nn.Embedding(12, 4)
    words = torch.tensor([[[3, 4, 5, 7, 8, 9, 10, 11, 2]]])  # (1, 1 patch, 5 + 4 band slots)
    E = embed.weight.detach()
    target, _ = word_targets(words, embed, region_scale=0.5, region_words=True, band_scale=0.25)
    want = E[3] + E[4] + E[5] + 0.5 * (E[7] + E[8]) + 0.25 * (E[9] + E[10] + E[11] + E[2])
    torch.testing.assert_close(target[0, 0], want)
    same, _ = word_targets(words, embed, region_scale=0.5, region_words=True)  # None: region's
    torch.testing.assert_close(
        same[0, 0], E[3] + E[4] + E[5] + 0.5 * E[[7, 8, 9, 10, 11, 2]].sum(0)
    )


def test_an_optimizer_group_follows_the_schedule_times_its_lr_scale():
    from specvlm.world.train_target.loop import _set_lr

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.25}], lr=1.0)
    _set_lr(opt, 2e-4)
    assert [g["lr"] for g in opt.param_groups] == [2e-4, 2e-4 * 0.25]


def test_a_trained_tower_is_carried_by_the_delta(trained, tiny):
    """--train-tower with --init and --refresh-steps: stage 1 runs the refresh steps from the
    delta (projector and tower on the alignment loss), stage 2 trains the tower too in its own
    optimizer group (lr tower_lr at the peak); the delta carries the changed tower, the
    assembled folder is the trained model, a stopped run resumes to the same delta, and a run
    continued from it with the tower frozen keeps that tower."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample
    from specvlm.world.train_target.lora import TOWER

    args = {"progress": False, "gguf": tiny["gguf"], "cache": tiny["cache"]}
    init = trained["out"] / "delta"
    tower_args = {"train_tower": True, "tower_lr": 1e-3, "refresh_steps": 2, "init": init}
    out = tiny["root"] / "tower"
    r = train_smol_target(out, "smol-tiny", steps=3, **tower_args, **args)
    assert r["align_steps"] == 2 and len(r["stage1_losses"]) == 2 and r["steps"] == 3
    ckpt = torch.load(out / "stage2.pt", weights_only=False)
    assert ckpt["optimizer"]["param_groups"][-1]["lr_scale"] == pytest.approx(1e-3 / 3e-3)
    assert any(k.startswith("tower.") for k in ckpt["model"])
    tensors = load_file(str(out / "delta" / smol.DELTA_WEIGHTS))
    tower = {k[len(TOWER) :]: v for k, v in tensors.items() if k.startswith(TOWER)}
    base = trained["result"]["trained_model"].model.vision_tower.state_dict()
    assert tower.keys() == base.keys()
    assert any(not torch.equal(tower[k], base[k].half()) for k in base)  # it trained
    assert json.loads((out / "delta" / smol.DELTA_CONFIG).read_text())["recipe"]["train_tower"]

    folder = smol.trained_world_smol_folder(out / "delta", tiny["gguf"], tiny["cache"])
    plain = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    ours = r["trained_model"].eval()
    image = render(world_sample("test", 1), size=128)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(plain(**inputs).logits, ours(**inputs).logits,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip

    stopped = tiny["root"] / "tower-stopped"
    train_smol_target(stopped, "smol-tiny", steps=3, stop_at=1, **tower_args, **args)
    train_smol_target(stopped, "smol-tiny", steps=3, resume=True, train_tower=True,
                      tower_lr=1e-3, refresh_steps=2, **args)  # fmt: skip
    weights = (out / "delta" / smol.DELTA_WEIGHTS).read_bytes()
    assert (stopped / "delta" / smol.DELTA_WEIGHTS).read_bytes() == weights

    frozen = tiny["root"] / "tower-frozen"
    train_smol_target(frozen, "smol-tiny", steps=2, init=out / "delta", **args)
    kept = load_file(str(frozen / "delta" / smol.DELTA_WEIGHTS))
    assert all(torch.equal(kept[TOWER + k], v) for k, v in tower.items())
    # the frozen tower is not checkpointed: a resume takes it from the --init delta again
    for stop in (1, 2):  # stopped in stage 1 (refresh) / in stage 2
        part = tiny["root"] / f"tower-frozen-{stop}"
        extra = {"refresh_steps": 2} if stop == 1 else {}
        train_smol_target(part, "smol-tiny", steps=2, init=out / "delta", stop_at=1, **extra,
                          **args)  # fmt: skip
        if stop == 1:  # from scratch in stage 1 (stop_at counts stage-2 steps): cut it back
            ckpt = torch.load(part / "stage1.pt", weights_only=False)
            assert ckpt["init_tower"] is True
            (part / "stage2.pt").unlink()
        r2 = train_smol_target(part, "smol-tiny", steps=2, resume=True, **extra, **args)
        again = load_file(str(part / "delta" / smol.DELTA_WEIGHTS))
        assert all(torch.equal(again[TOWER + k], v) for k, v in tower.items()), stop
        assert r2["steps"] == 2
    assert (tiny["root"] / "tower-frozen-2" / "delta" / smol.DELTA_WEIGHTS).read_bytes() == (
        frozen / "delta" / smol.DELTA_WEIGHTS
    ).read_bytes()


def test_the_alignment_loss_reads_the_image_rows_of_a_mixed_batch():
    """Stage 2 batches mix image and text-only rows; the projector's output exists for the image
    rows only, and the alignment loss must pair it with those rows' patch words."""
    from types import SimpleNamespace

    from specvlm.world.train_target.loop import train_step

    torch.manual_seed(0)
    d, P, image_id = 8, 4, 9
    embed = torch.nn.Embedding(10, d)
    proj = torch.nn.Linear(3, d)
    seen = {}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.proj = embed, proj

        def get_input_embeddings(self):
            return self.embed

    def forward(model, ids, pixels, pointer_layer):
        rows = (ids == image_id).any(1)
        projected = model.proj(torch.ones(int(rows.sum()), P, 3))  # (b, P, d)
        seen["rows"] = int(rows.sum())
        return torch.zeros(ids.shape[0], ids.shape[1], 10, requires_grad=True), None, projected

    cfg = SimpleNamespace(
        bf16=False, aux_weight=0.0, align_weight=1.0, align_blank_weight=0.5, region_scale=0.6,
        clip_norm=1.0,
    )  # fmt: skip
    model = Model()
    trained = torch.nn.ModuleDict({"proj": proj})
    run = SimpleNamespace(cfg=cfg, model=model, trained=trained,
                          opt=torch.optim.SGD(trained.parameters(), lr=0.0))  # fmt: skip
    ids = torch.tensor([[1, 2, 3], [image_id, 2, 3], [1, 1, 1]])  # only row 1 has an image
    words = torch.zeros(3, P, 5, dtype=torch.long)
    words[1, 0, :3] = torch.tensor([4, 5, 6])
    batch = {"input_ids": ids, "pixel_values": None, "labels": torch.full((3, 3), -100),
             "patch_words": words, "pointer": torch.full((3, 3), -1)}  # fmt: skip
    batch["labels"][:, 1] = 1
    losses = train_step(run, batch, forward, image_id, None)
    assert seen["rows"] == 1 and losses["align"] is not None and losses["align"] > 0
