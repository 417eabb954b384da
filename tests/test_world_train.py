"""The world target recipe on a tiny config: loss goes down, the folder loads, resume, masking."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from specvlm.world import train_target as tt
from specvlm.world.language import make_record


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train the tiny config for 40 steps, checkpointing at step 20 (a few seconds)."""
    out = tmp_path_factory.mktemp("world-target")
    summary = tt.train_target(out, "tiny", steps=40, ckpt_every=20, progress=False)
    return out, summary


def test_loss_goes_down(run):
    _, summary = run
    assert summary["steps"] == 40
    losses = torch.load(run[0] / "checkpoint.pt", weights_only=False)["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0


def test_saved_folder_loads_with_auto_classes(run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from specvlm.world.scenes import render
    from specvlm.world.splits import world_sample

    folder = run[0] / "model"
    model = AutoModelForImageTextToText.from_pretrained(str(folder))
    processor = AutoProcessor.from_pretrained(str(folder))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.dtype == torch.float16
    assert not list(folder.glob("*.pt")) and list(folder.glob("*.safetensors"))
    # The processor sees what training saw: same pixels, same prompt tokens.
    cfg = tt.CONFIGS["tiny"]
    image = render(world_sample("train", 0, "image"), cfg.image_size)
    record = make_record("train", 0, "conversation")
    prompt = processor.apply_chat_template(tt.chat_messages(record)[:1], add_generation_prompt=True)
    # the model-card way (as llava-hf): the template writes no <s>, the tokenizer adds one
    enc = processor(text=prompt, images=image, return_tensors="pt")
    ids, mask = tt.encode_record(record, processor.tokenizer, cfg.n_image_tokens)
    n = enc["input_ids"].shape[1]
    bos = processor.tokenizer.bos_token_id
    assert enc["input_ids"][0].tolist() == ids[:n].tolist()
    assert ids[0] == bos and ids[1] != bos
    assert not mask[:n].any() and mask[n:].all()
    expected = tt.normalize(torch.from_numpy(np.array(image))[None])
    assert torch.allclose(enc["pixel_values"], expected, atol=2e-2)
    with torch.no_grad():
        out = model.float().generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == n + 3 or out[0, -1] == processor.tokenizer.eos_token_id


@pytest.mark.slow
def test_resume_continues_from_checkpoint(run, tmp_path):
    out, _ = run
    # A run stopped at step 20, then resumed to 40, matches the uninterrupted 40-step run.
    part = tmp_path / "part"
    part.mkdir()
    (part / "tokenizer").symlink_to(out / "tokenizer")
    tt.train_target(part, "tiny", steps=40, stop_at=20, progress=False)
    ckpt20 = torch.load(part / "checkpoint.pt", weights_only=False)
    assert ckpt20["step"] == 20
    summary = tt.train_target(part, "tiny", steps=40, resume=True, progress=False)
    assert summary["steps"] == 40
    resumed = torch.load(part / "checkpoint.pt", weights_only=False)
    full = torch.load(out / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == full["step"] == 40
    state = resumed["optimizer"]["state"]
    assert all(float(s["step"]) == 40 for s in state.values())  # Adam moments carried over
    assert np.allclose(resumed["losses"][:20], ckpt20["losses"])
    for name, w in full["model"].items():
        assert torch.allclose(resumed["model"][name], w, atol=1e-5), name


def test_resume_without_checkpoint_is_an_input_error(tmp_path):
    from specvlm.errors import InputError

    with pytest.raises(InputError):
        tt.train_target(tmp_path / "none", "tiny", steps=5, resume=True, progress=False)


def test_resume_refuses_other_settings_and_names_them(run, tmp_path):
    from specvlm.errors import InputError

    out, _ = run
    part = tmp_path / "other"
    part.mkdir()
    for name in ("tokenizer", "checkpoint.pt"):
        (part / name).symlink_to(out / name)
    want = "trained with batch_size 4, lr 0.003, this run asks for batch_size 8, lr 0.001"
    with pytest.raises(InputError, match=want):
        tt.train_target(part, "tiny", steps=40, resume=True, progress=False, batch_size=8, lr=1e-3)


def test_unknown_config_is_an_input_error(tmp_path):
    from specvlm.errors import InputError

    with pytest.raises(InputError, match="unknown --config 'huge'"):
        tt.train_target(tmp_path / "a", "huge", steps=1, progress=False)


def test_init_starts_from_a_trained_target_and_skips_the_vision_stage(run, tmp_path):
    """--init: the LLaVA stage starts from the saved model's weights (its first loss is the
    trained model's, far below a fresh start's) and no vision-stage step runs."""
    from transformers import AutoModelForImageTextToText

    out, _ = run
    part = tmp_path / "ft"
    part.mkdir()
    (part / "tokenizer").symlink_to(out / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    # init_weights: a fresh model takes exactly the saved (fp16) weights
    model = tt.build_model(tt.CONFIGS["tiny"], tokenizer)
    tt.init_weights(model, tokenizer, out / "model")
    saved = AutoModelForImageTextToText.from_pretrained(str(out / "model"), dtype=torch.float32)
    for name, w in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], w), name
    ft = tt.train_target(part, "tiny", steps=5, progress=False, init=out / "model")
    ckpt = torch.load(part / "checkpoint.pt", weights_only=False)
    assert ckpt["vision"] == {} and ckpt["init"] == str(out / "model")
    fresh = torch.load(out / "checkpoint.pt", weights_only=False)["losses"]
    assert ft["first_loss"] < fresh[0] - 1.0
    assert abs(ft["first_loss"] - np.mean(fresh[-5:])) < 1.0


def test_init_rejects_what_does_not_fit(run, tmp_path):
    from specvlm.errors import InputError

    out, _ = run
    with pytest.raises(InputError, match="not a model folder"):
        tt.train_target(tmp_path / "a", "tiny", steps=2, progress=False, init=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    wide = tt.build_model(replace(tt.CONFIGS["tiny"], hidden=96), tokenizer)
    with pytest.raises(InputError, match="does not fit this config"):
        tt.init_weights(wide, tokenizer, out / "model")


def test_loss_mask_covers_answer_tokens_only(run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run[0] / "tokenizer"))
    record = make_record("train", 3, "multiturn")
    ids, mask = tt.encode_record(record, tokenizer, n_image_tokens=16)
    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    # The masked tokens are exactly the answers, each followed by </s>.
    assert tokenizer.decode(ids[mask].tolist()) == "".join(f" {a}</s>" for a in answers)
    assert (ids == tokenizer.convert_tokens_to_ids("<image>")).sum() == 16
    labels = tt.labels_from_mask(torch.from_numpy(ids), torch.from_numpy(mask))
    assert (labels[~torch.from_numpy(mask)] == tt.IGNORE).all()
    # The loss ignores every position that is not an answer token.
    logits = torch.randn(1, len(ids), len(tokenizer))
    changed = logits.clone()
    prompt_positions = torch.from_numpy(~np.roll(mask, -1))  # positions that predict no answer
    changed[0, prompt_positions] = torch.randn_like(changed[0, prompt_positions])
    assert torch.allclose(
        tt.answer_loss(logits, labels[None]), tt.answer_loss(changed, labels[None])
    )


def test_evaluate_runs_on_the_saved_folder(run):
    from specvlm.world.evaluate import evaluate_target, format_report

    r = evaluate_target(run[0] / "model", "test", n=2, max_description_tokens=8, progress=False)
    assert 0.0 <= r["closed_accuracy"] <= 1.0 and r["closed_count"] >= 1
    assert 0.0 <= r["description_coverage"] <= 1.0
    # the per-object-count split adds up to the whole, and every uncovered scene left one out
    by_count = r["description_by_objects"]
    assert sum(m for _, m in by_count.values()) == 2
    assert sum(a * m for a, m in by_count.values()) == pytest.approx(2 * r["description_coverage"])
    assert sum(r["description_missed"].values()) >= round(2 * (1 - r["description_coverage"]))
    # position questions split by objects in the scene add up to the position type's count
    positions = r["per_type"].get("position", (0.0, 0))
    by_objects = r["position_by_objects"]
    assert sum(m for _, m in by_objects.values()) == positions[1]
    assert sum(a * m for a, m in by_objects.values()) == pytest.approx(positions[0] * positions[1])
    assert 0.0 < r["mean_entropy"] < np.log(200_000)
    assert "closed questions" in format_report(r)


def test_patch_labels_follow_the_scene():
    from specvlm.world.scenes import COLORS, SHAPES, Scene, SceneObject

    grid = 8
    a = SceneObject("star", "red", "large", x=0.30, y=0.70, z=0)
    b = SceneObject("circle", "blue", "small", x=0.81, y=0.12, z=1)
    labels = tt.patch_labels(Scene(objects=(a, b), background=_plain()), grid)
    assert labels.shape == (len(tt.PATCH_LABELS), grid * grid)
    center_color = labels[list(tt.PATCH_LABELS).index("center_color")].reshape(grid, grid)
    center_shape = labels[list(tt.PATCH_LABELS).index("center_shape")].reshape(grid, grid)
    # one centre label per object, in the patch holding its centre (row = y, column = x)
    assert (center_color > 0).sum() == 2
    assert center_color[5, 2] == list(COLORS).index("red") + 1
    assert center_shape[5, 2] == list(SHAPES).index("star") + 1
    assert center_color[0, 6] == list(COLORS).index("blue") + 1
    # ... and the region the grammar names for that centre: bottom left, top right
    center_region = labels[list(tt.PATCH_LABELS).index("center_region")].reshape(grid, grid)
    assert (center_region > 0).sum() == 2
    assert center_region[5, 2] == tt.REGIONS.index("bottom left") + 1
    assert center_region[0, 6] == tt.REGIONS.index("top right") + 1
    cover_color = labels[list(tt.PATCH_LABELS).index("cover_color")].reshape(grid, grid)
    # the large star covers several patches, all red; far corners show nothing
    assert (cover_color == list(COLORS).index("red") + 1).sum() >= 3
    assert cover_color[7, 7] == 0 and cover_color[0, 0] == 0


def _plain():
    from specvlm.world.scenes import Background

    return Background(tone="white", pattern="plain")


def test_vision_stage_learns_patch_labels(run):
    """Stage 1 ran in the tiny run; the patch loss falls and occupied patches are labelled
    above chance."""
    _, summary = run
    vision = summary["vision"]
    assert vision["last_loss"] < vision["first_loss"] - 0.5
    assert vision["patch_accuracy"] > 1 / 9  # above a uniform guess over 8-9 classes


def test_patch_words_name_the_object_at_its_centre(run):
    from transformers import AutoTokenizer

    from specvlm.world.scenes import Scene, SceneObject

    tokenizer = AutoTokenizer.from_pretrained(str(run[0] / "tokenizer"))
    a = SceneObject("star", "red", "large", x=0.10, y=0.90, z=0)
    b = SceneObject("circle", "blue", "small", x=0.50, y=0.50, z=1)
    words = tt.patch_words(Scene(objects=(a, b), background=_plain()), 8, tokenizer)
    assert words.shape == (64, tt.N_PATCH_SLOTS)
    k = tt.N_PATCH_WORDS
    named = {
        i: (tokenizer.decode(row[:k]), list(row[k:])) for i, row in enumerate(words) if row.any()
    }
    # the region as codes: 1 + row third (0 top, 2 bottom), 4 + column third (0 left, 1 center)
    assert named == {
        7 * 8 + 0: (" red star large", [3, 4]),
        4 * 8 + 4: (" blue circle small", [2, 5]),
    }


def test_region_thirds_agree_with_the_grammar():
    from specvlm.world.grammar import region

    rows, cols = ("top", "", "bottom"), ("left", "", "right")
    for x in np.linspace(0, 1, 13):
        for y in np.linspace(0, 1, 13):
            r, c = tt.region_thirds(x, y)
            assert region(x, y) == (" ".join(w for w in (rows[r], cols[c]) if w) or "center")


def test_word_targets_add_region_codes_at_a_share_of_the_word_norm():
    embed = torch.nn.Embedding(10, 16)
    words = torch.tensor([[[1, 2, 3, 1, 6], [1, 2, 3, 3, 4], [0, 0, 0, 0, 0]]])  # (B=1, P=3, 5)
    target, named = tt.word_targets(words, embed, region_scale=0.7)
    assert named.tolist() == [[True, True, False]]
    E = embed.weight.detach()
    words_sum = E[1] + E[2] + E[3]
    size = (E[1].norm() + E[2].norm() + E[3].norm()) / 3
    codes = tt.region_codes(16)
    assert torch.allclose(codes[1:] @ codes[1:].T, torch.eye(6), atol=1e-5)  # orthonormal
    assert torch.equal(codes[0], torch.zeros(16))
    expect = words_sum + 0.7 * size * (codes[1] + codes[6])
    assert torch.allclose(target[0, 0], expect, atol=1e-6)
    # same words, another region: the targets differ only along the codes
    diff = target[0, 1] - target[0, 0]
    assert torch.allclose(diff, 0.7 * size * (codes[3] + codes[4] - codes[1] - codes[6]), atol=1e-6)
    assert torch.equal(target[0, 2], torch.zeros(16))


def test_align_loss_is_zero_at_the_word_embeddings():
    embed = torch.nn.Embedding(10, 4)
    words = torch.tensor([[[1, 2, 0], [0, 0, 0]]])  # (B=1, P=2, W=3): patch 0 names tokens 1, 2
    target = embed.weight[1] + embed.weight[2]
    exact = torch.stack([target, torch.randn(4)])[None]  # patch 1 has no words: not counted
    assert tt.align_loss(exact, words, embed).item() < 1e-10
    assert tt.align_loss(torch.zeros(1, 2, 4), words, embed).item() == pytest.approx(1.0)


def test_align_loss_pulls_blank_patches_to_one_vector():
    embed = torch.nn.Embedding(10, 4)
    words = torch.tensor([[[1, 2, 0], [0, 0, 0], [0, 0, 0]]])  # patch 0 named; 1 and 2 blank
    target = embed.weight[1] + embed.weight[2]
    blank = embed.weight[7]
    exact = torch.stack([target, blank, blank])[None].detach()
    assert tt.align_loss(exact, words, embed, blank_id=7, blank_weight=0.5).item() < 1e-10
    # a blank patch at zero costs blank_weight * (1 of 2 blank patches)
    half = torch.stack([target, blank, torch.zeros(4)])[None].detach()
    loss = tt.align_loss(half, words, embed, blank_id=7, blank_weight=0.5).item()
    assert loss == pytest.approx(0.25)
    # without blank_id the blank patches are free
    assert tt.align_loss(half, words, embed).item() < 1e-10


def test_llava_forward_matches_the_model(run):
    """The spelled-out forward used in training gives the model's own logits."""
    from transformers import AutoModelForImageTextToText

    folder = str(run[0] / "model")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    n_img = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    ids = torch.tensor([[1, 5] + [model.config.image_token_id] * n_img + [6, 7, 8]] * 2)
    ids[1, -1] = 9
    side = model.config.vision_config.image_size
    px = torch.randn(2, 3, side, side)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=px).logits
        got, feats, projected = tt.llava_forward(model, ids, px)
    assert projected.shape == (2, n_img, model.config.text_config.hidden_size)
    assert feats.shape[:2] == (2, n_img)
    torch.testing.assert_close(got, want)


def test_drill_records_are_grounded_closed_questions():
    from specvlm.world import grammar
    from specvlm.world.language import make_drill, make_record

    rec = make_drill("train", 7, n_turns=6)
    assert rec == make_drill("train", 7, n_turns=6)  # deterministic
    assert rec["meta"]["family"] == "drill" and len(rec["meta"]["turns"]) == 6
    human = [c["value"] for c in rec["conversations"][::2]]
    assert human[0].startswith("<image>\n") and len(set(human)) == 6
    # every answer is scored right against its own closed-form truth
    for meta, c in zip(rec["meta"]["turns"], rec["conversations"][1::2], strict=True):
        assert grammar.check_answer(meta, c["value"])
    # a separate random stream: the family records are unchanged by drills
    assert make_record("train", 7, "multiturn")["conversations"] != rec["conversations"][:4]


def test_drills_ask_where_things_are_in_about_half_the_turns():
    from specvlm.world.language import make_drill

    where, total = 0, 0
    for i in range(60):
        metas = make_drill("train", i, n_turns=6)["meta"]["turns"]
        where += sum(m["qtype"] in ("position", "relation", "corner") for m in metas)
        total += len(metas)
    assert total == 360 and where / total > 0.45  # the conversation family alone: ~1 in 3


def test_clip_drills_ask_about_motion_every_third_turn_and_are_right():
    from specvlm.errors import InputError
    from specvlm.world import grammar
    from specvlm.world.language import make_drill

    motion, total = 0, 0
    for i in range(40):
        rec = make_drill("train", i, n_turns=6, kind="video")
        assert rec == make_drill("train", i, n_turns=6, kind="video")  # deterministic
        assert rec["id"].endswith("-video-drill") and rec["meta"]["family"] == "drill"
        human = [c["value"] for c in rec["conversations"][::2]]
        assert human[0].startswith("<video>\n") and len(set(human)) == len(human)
        metas = rec["meta"]["turns"]
        for meta, c in zip(metas, rec["conversations"][1::2], strict=True):
            assert grammar.check_answer(meta, c["value"]), (i, meta, c["value"])
        # no fact twice: each type once, "which way" and "does it move" once per object
        facts = [(m["qtype"], m.get("track")) for m in metas]
        assert len(facts) == len(set(facts)), facts
        assert all(m["track"] >= 0 for m in metas if m["qtype"] in ("direction", "moving"))
        motion += sum(m["qtype"] in ("direction", "moving", "count_moving") for m in metas)
        total += len(metas)
    assert total == 240 and motion / total > 0.4  # the conversation family alone: ~1 in 3
    with pytest.raises(InputError, match="not 'events'"):
        make_drill("train", 0, kind="events")


def test_tiny_run_trains_on_drills(run):
    out, _ = run
    data = torch.load(next(out.glob("data-v8-*drill3*.pt")))
    assert data["family"].count("drill") == tt.CONFIGS["tiny"].n_scenes
    assert len(data["ids"]) == len(data["family"]) == len(data["scene"])


def test_answer_pointers_point_at_the_named_objects_centre_patch():
    """Colour / shape / position answers point every answer token at their object's patch."""
    from transformers import AutoTokenizer

    from specvlm.world import grammar
    from specvlm.world.language import make_drill
    from specvlm.world.splits import world_sample

    tok = AutoTokenizer.from_pretrained("src/specvlm/assets/world-target")
    grid, pointed, checked = 8, 0, 0
    for i in range(12):
        rec, scene = make_drill("train", i, n_turns=8), world_sample("train", i, "image")
        ids, mask = tt.encode_record(rec, tok, grid * grid)
        ptr = tt.answer_pointers(rec, scene, mask, grid)
        assert ptr.shape == mask.shape and (ptr[~mask] == -1).all()  # answers only
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        for meta, s in zip(rec["meta"]["turns"], starts, strict=True):
            if "obj" not in meta:
                assert ptr[s] == -1
                continue
            assert meta["qtype"] in ("color", "shape", "position")
            o = scene.objects[meta["obj"]]
            # the recorded object is the one the answer is about
            truth = {"color": o.color, "shape": o.shape, "position": grammar.region(o.x, o.y)}
            assert meta["answer"] == truth[meta["qtype"]]
            if ptr[s] >= 0:  # unless another object's centre shares (and owns) the patch
                assert ptr[s] == min(int(o.y * grid), 7) * grid + min(int(o.x * grid), 7)
                pointed += 1
            checked += 1
    assert checked > 20 and pointed >= 0.8 * checked
    # answers that cannot be paired one to one with the turns: no pointers, said as None
    assert tt.answer_pointers(rec, scene, np.zeros_like(mask), grid) is None


def test_description_sentences_point_at_the_object_they_tell_of():
    """Each object's sentence in a description points its tokens at that object's patch; the
    intro, relations and summaries point nowhere; without the tokenizer, descriptions do not
    point."""
    from transformers import AutoTokenizer

    from specvlm.world import grammar
    from specvlm.world.language import make_record
    from specvlm.world.splits import world_sample

    tok = AutoTokenizer.from_pretrained("src/specvlm/assets/world-target")
    grid, checked = 8, 0
    for i in range(16):
        rec, scene = make_record("train", i, "detailed", "image"), world_sample("train", i, "image")
        ids, mask = tt.encode_record(rec, tok, grid * grid)
        ptr = tt.answer_pointers(rec, scene, mask, grid, ids, tok)
        assert (ptr[~mask] == -1).all()
        answer = rec["conversations"][1]["value"]
        spans = rec["meta"]["sentences"]
        assert len(spans) == len(scene.objects)
        # runs of one pointer, decoded: each pointed run is exactly one object's sentence
        runs, cur = [], None
        for t, p in zip(ids[mask], ptr[mask], strict=True):
            if cur is None or p != cur[0]:
                cur = [p, []]
                runs.append(cur)
            cur[1].append(int(t))
        pointed = [(p, tok.decode(t).strip()) for p, t in runs if p >= 0]
        for p, text in pointed:
            lo, hi, k = next(s for s in spans if answer[s[0] : s[1]] == text)
            o = scene.objects[k]
            assert grammar.mentions(text, o.color, o.shape)
            assert p == min(int(o.y * grid), 7) * grid + min(int(o.x * grid), 7)
            checked += 1
        assert len(pointed) <= len(spans)
        unpointed = "".join(tok.decode(t) for p, t in runs if p < 0)
        assert answer.split(".")[0] in unpointed  # the intro
        no_tok = tt.answer_pointers(rec, scene, mask, grid)
        assert (no_tok == -1).all()
    assert checked >= 30


def test_collate_shifts_pointers_to_the_queries_and_the_image_tokens():
    """Query t predicts token t + 1: it gets token t + 1's pointer, as a key position."""
    image_id, grid = 3, 2
    ids = torch.tensor([1, 3, 3, 3, 3, 7, 8, 9, 2], dtype=torch.int16)  # <s> <image>x4 q a a </s>
    mask = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    ptr = torch.tensor([-1, -1, -1, -1, -1, -1, 2, 2, 2], dtype=torch.int16)
    data = {
        "ids": [ids],
        "masks": [mask],
        "pointers": [ptr],
        "scene": torch.tensor([0]),
        "images": torch.zeros(1, 4, 4, 3, dtype=torch.uint8),
        "patches": torch.zeros(1, 6, grid * grid, dtype=torch.int8),
        "patch_words": torch.zeros(1, grid * grid, 5, dtype=torch.int16),
    }
    for extra in (False, True):
        b = tt.collate(data, np.array([0]), 0, 1, np.array([extra]), image_id)
        p, o = b["pointer"][0], int(extra)
        # the image tokens start at 1 (+1 with a second <s>); patch 2 is key 3 (+1)
        want = torch.full_like(p, -1)
        want[5 + o : 8 + o] = 3 + o  # queries 5, 6, 7 predict tokens 6, 7, 8
        assert torch.equal(p, want)
        assert (b["labels"][0] >= 0).nonzero().flatten().tolist() == [6 + o, 7 + o, 8 + o]
    no_image = tt.collate(data, np.array([0]), 0, 1, None)
    assert (no_image["pointer"] == -1).all()


def test_weighted_answer_loss_adds_the_key_tokens_extra_share():
    """Weights 1: the plain loss. Weight w on one labelled token adds (w - 1) times its
    cross-entropy over the number of labelled tokens; a weight on an unlabelled one does nothing."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 6, -100, -100]])
    plain = tt.answer_loss(logits, labels)
    ones = torch.ones(2, 5)
    loss, unweighted = tt.weighted_answer_loss(logits, labels, ones)
    assert torch.allclose(loss, plain) and torch.equal(unweighted, plain)
    w = ones.clone()
    w[0, 3] = 5.0  # label 4 at position 3, predicted by position 2
    ce = -torch.log_softmax(logits[0, 2], -1)[4]
    loss, unweighted = tt.weighted_answer_loss(logits, labels, w)
    assert torch.allclose(loss, plain + 4.0 * ce / 5) and torch.equal(unweighted, plain)
    w = ones.clone()
    w[1, 4] = 9.0  # not labelled
    assert torch.allclose(tt.weighted_answer_loss(logits, labels, w)[0], plain)


def _two_rows() -> dict:
    """Two identical rows for `collate`: <s> <image>x2 q a a </s>, the last three answer tokens."""
    ids = torch.tensor([1, 3, 3, 7, 8, 9, 2], dtype=torch.int16)
    mask = torch.tensor([0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    return {
        "ids": [ids, ids],
        "masks": [mask, mask],
        "scene": torch.tensor([0, 0]),
        "images": torch.zeros(1, 4, 4, 3, dtype=torch.uint8),
        "patches": torch.zeros(1, 6, 4, dtype=torch.int8),
        "patch_words": torch.zeros(1, 4, 5, dtype=torch.int16),
    }


def test_collate_puts_each_rows_token_weights_on_its_tokens():
    data = _two_rows()
    assert "weights" not in tt.collate(data, np.array([0, 1]), 0, 1, None)
    key = torch.ones(7)
    key[4] = 6.0  # the first answer token
    data["token_weights"] = [key, None]
    for extra in (False, True):
        b = tt.collate(data, np.array([0, 1]), 0, 1, np.array([extra, extra]))
        want = torch.ones_like(b["weights"])
        want[0, 4 + int(extra)] = 6.0  # the first answer token, after a second <s> if any
        assert torch.equal(b["weights"], want)
        assert int(b["labels"][0, 4 + int(extra)]) == 8
    data["token_weights"] = [None, torch.tensor([1, 1, 1, 1, 2.0, 3.0, 3.0])]
    for extra in (False, True):
        b = tt.collate(data, np.array([0, 1]), 0, 1, np.array([extra, extra]))
        want = torch.ones_like(b["weights"])
        want[1, 4 + int(extra)] = 2.0
        want[1, 5 + int(extra) : 7 + int(extra)] = 3.0  # the row's weighted tokens
        assert torch.equal(b["weights"], want)
    b = tt.collate(data, np.array([1, 0]), 0, 1, None)  # weights follow the row, not the slot
    assert b["weights"][0, 5] == 3.0 and torch.equal(
        b["weights"][1], torch.ones(b["weights"].shape[1])
    )


def test_record_repeats_by_family():
    from specvlm.world.train_target.smol import SMOL_CONFIGS

    fams = ["conversation", "multiple_choice", "detailed", "multiturn", "text", "reasoning"]
    assert tt.record_repeats(fams, tt.CONFIGS["small"]).tolist() == [
        tt.CONFIGS["small"].qa_repeats, 1, 1, tt.CONFIGS["small"].qa_repeats, 1, 1
    ]  # fmt: skip
    cfg = replace(SMOL_CONFIGS["smol"], mc_repeats=3, reasoning_repeats=2)
    assert tt.record_repeats(fams, cfg).tolist() == [1, 3, 1, 1, 1, 2]
    cfg = replace(cfg, multiturn_repeats=4)
    assert tt.record_repeats(fams, cfg).tolist() == [1, 3, 1, 4, 1, 2]


def test_pointer_loss_is_the_cross_entropy_at_the_pointed_keys():
    att = torch.full((1, 3, 4), 0.25)
    att[0, 1] = torch.tensor([0.1, 0.7, 0.1, 0.1])
    ptr = torch.tensor([[-1, 1, 3]])
    want = -(np.log(0.7) + np.log(0.25)) / 2
    assert abs(tt.pointer_loss(att, ptr).item() - want) < 1e-5
    assert tt.pointer_loss(att, torch.full((1, 3), -1)).item() == 0.0


def test_tiny_run_learns_to_point(run):
    """The tiny run's pointer head moves its attention towards the named objects."""
    out, _ = run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["pointer_weight"] > 0 and ckpt["config"]["pointer_layer"] == 1
    losses = [x for x in ckpt["pointer_losses"] if x > 0]  # batches with no pointed answer: 0
    assert len(losses) > 20
    print(np.mean(losses[:5]), np.mean(losses[-5:]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config", "small", "--clips", "10"], "--clips applies to --config video, events"),
        (["--config", "video", "--clips", "0"], "--clips must be at least 1"),
        (["--config", "video", "--seed", "-1"], "--seed must be 0 or more"),
        (["--config", "video", "--reads", "frame"], "--reads applies to --config events only"),
        (["--config", "events", "--init-head", "x"], "--init-head applies to --config cross"),
        (["--config", "video", "--teacher", "x"], "--teacher applies to --config events and"),
        (["--config", "cross", "--steps", "2"], "needs --teacher"),
        (["--config", "video", "--scenes", "10"], "--scenes applies to --config smol and"),
        (["--config", "smol", "--layers", "2"], "--layers applies to --config smol-assistant"),
        (["--config", "smol-assistant", "--steps", "2"], "needs --init"),
        (["--config", "smol", "--scenes", "0"], "--scenes must be at least 1"),
        (["--config", "video", "--mc-repeats", "2"], "--mc-repeats applies to --config smol"),
        (["--config", "smol", "--mc-repeats", "0"], "--mc-repeats must be at least 1"),
        (
            ["--config", "video", "--reasoning-repeats", "2"],
            "--reasoning-repeats applies to --config smol",
        ),
        (
            ["--config", "smol", "--reasoning-repeats", "0"],
            "--reasoning-repeats must be at least 1",
        ),
        (
            ["--config", "video", "--multiturn-repeats", "2"],
            "--multiturn-repeats applies to --config smol",
        ),
        (
            ["--config", "smol", "--multiturn-repeats", "0"],
            "--multiturn-repeats must be at least 1",
        ),
        (["--config", "smol", "--letter-weight", "0"], "--letter-weight must be positive"),
        (["--config", "smol-assistant", "--letter-weight", "2"], "--letter-weight applies to"),
        (["--config", "smol", "--verdict-weight", "-2"], "--verdict-weight must be positive"),
        (["--config", "events", "--verdict-weight", "2"], "--verdict-weight applies to"),
        (["--config", "video", "--letter-weight", "0"], "--letter-weight must be positive"),
        (["--config", "video", "--band-words"], "--band-words applies to --config smol"),
        (["--config", "smol-assistant", "--text-kl", "1"], "--text-kl applies to --config smol"),
        (["--config", "smol", "--text-kl", "-1"], "--text-kl must be 0 or more"),
        (["--config", "events", "--train-tower"], "--train-tower applies to --config video"),
        (["--config", "smol", "--tower-lr", "1e-4"], "--tower-lr needs --train-tower"),
        (
            ["--config", "smol", "--train-tower", "--tower-lr", "0"],
            "--tower-lr must be positive",
        ),
        (["--config", "smol", "--band-scale", "0.3"], "--band-scale needs --band-words"),
        (
            ["--config", "smol", "--band-words", "--band-scale", "-1"],
            "--band-scale must be positive",
        ),
        (["--config", "smol", "--refresh-steps", "5"], "--refresh-steps applies to --config smol"),
        (
            ["--config", "video", "--init", "x", "--refresh-steps", "5"],
            "--refresh-steps applies to --config smol",
        ),
        (["--config", "smol", "--resume", "--refresh-steps", "5"], "--resume: no checkpoint"),
        (["--config", "smol", "--motion-weight", "1"], "--motion-weight applies to --config vid"),
        (["--config", "video", "--motion-weight", "-1"], "--motion-weight must be 0 or more"),
        (["--config", "video", "--motion-span", "clip"], "--motion-span needs --motion-weight"),
        (
            ["--config", "video", "--motion-weight", "0", "--motion-span", "clip"],
            "--motion-span needs --motion-weight",
        ),
        (["--config", "smol", "--drill-turns", "4"], "--drill-turns applies to --config video"),
        (["--config", "video", "--drill-turns", "-1"], "--drill-turns must be 0 or more"),
    ],
)
def test_train_target_refuses_flags_its_recipe_does_not_take(tmp_path, capsys, extra, message):
    from specvlm.cli import main

    code = main(["world", "train-target", "--out", str(tmp_path / "o"), "--minutes", "1", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
