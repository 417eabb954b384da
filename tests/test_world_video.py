"""The world video target's starting point (`world.video_target`): a Video-LLaVA assembled
from the embedded world target reads images exactly as that target does, and reads a world
clip as 8 frames of 65 tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from specvlm import api, embedded
from specvlm.errors import InputError
from specvlm.target.video_llava import VideoLlavaTarget
from specvlm.world.clips import render_clip
from specvlm.world.scenes import render
from specvlm.world.splits import world_sample
from specvlm.world.video_target import assemble_world_video

pytestmark = pytest.mark.skipif(
    embedded.embedded_target() is None, reason="the embedded world target is not shipped here"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return assemble_world_video(embedded.embedded_target(), tmp_path_factory.mktemp("wv") / "m")


def test_on_images_it_is_the_world_target(folder):
    video = api.load(target=folder)
    image = api.load(target=embedded.embedded_target(), draft=None)
    assert isinstance(video.target, VideoLlavaTarget)
    for i in range(3):
        scene = render(world_sample("test", i, "image"))
        prompt = "<image>\ndescribe the image in detail."
        a = video.generate(prompt, images=[scene], max_new_tokens=40)
        b = image.generate(prompt, images=[scene], max_new_tokens=40, speculative=False)
        assert a.token_ids == b.token_ids and a.text.strip()


def test_a_world_clip_reads_as_eight_frames_of_65_tokens(folder):
    video = api.load(target=folder)
    frames = render_clip(world_sample("test", 0, "video"), 128)
    prompt = video.target.prepare("what moves?", None, video=frames)
    n_video = int((prompt.input_ids == video.target.video_token_id).sum())
    assert n_video == 8 * 65
    out = video.generate("what moves?", video=frames, max_new_tokens=8, speculative=False)
    assert (
        len(out.token_ids) >= 1
    )  # untrained on video: it decodes, what it says is not yet meaningful
    assert np.asarray(frames[0]).shape == (128, 128, 3)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(InputError, match="not a model folder"):
        assemble_world_video(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="num_frames"):
        assemble_world_video(embedded.embedded_target(), tmp_path / "out", num_frames=0)


def test_the_training_forward_is_transformers_own(folder):
    import torch
    from transformers import VideoLlavaForConditionalGeneration

    from specvlm.world.train_target.model import normalize
    from specvlm.world.train_target.video import video_forward

    model = VideoLlavaForConditionalGeneration.from_pretrained(folder).eval()
    frames = render_clip(world_sample("train", 1, "video"), 128)[:8]
    pixels = normalize(torch.from_numpy(np.stack([np.asarray(f) for f in frames]))[None])
    target = api.load(target=folder).target
    ids = target.prepare("what moves?", None, video=frames).input_ids[None]
    with torch.no_grad():
        ours = video_forward(model, ids, pixels)[0]
        theirs = model(input_ids=ids, pixel_values_videos=pixels).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_shared_prefix_forward_gives_the_same_logits_and_gradients(folder, tmp_path):
    """Two clips x five families in one batch: each clip's frames run once, and every logit an
    answer is scored on, and the gradient of the answer loss, are the per-record forward's."""
    import torch
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    from specvlm.world.train_target.data import collate
    from specvlm.world.train_target.losses import IGNORE, answer_loss
    from specvlm.world.train_target.video import (
        VideoTrainConfig,
        build_video_data,
        clip_batches,
        shared_prefix_forward,
        video_forward,
    )

    model = VideoLlavaForConditionalGeneration.from_pretrained(folder).train()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = build_video_data(VideoTrainConfig(n_clips=4, num_frames=2), tokenizer, progress=False)
    batches = clip_batches(data["scene"], 2, seed=0, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(20))  # every record once
    idx = batches[0]
    assert len(idx) == 10 and len(set(data["scene"][idx].tolist())) == 2
    batch = collate(data, idx, tokenizer.pad_token_id)
    grads = []
    for forward in (video_forward, shared_prefix_forward):
        model.zero_grad()
        logits = forward(model, batch["input_ids"], batch["pixel_values"])[0]
        answer_loss(logits, batch["labels"]).backward()
        scored = batch["labels"][:, 1:] != IGNORE  # (B, T - 1): position t predicts t + 1
        grads.append((logits[:, :-1][scored].detach(), model.lm_head.weight.grad.clone(),
                      model.model.multi_modal_projector.linear_1.weight.grad.clone()))  # fmt: skip
    for a, b in zip(*grads, strict=True):
        # float32 sums in another order: an error in proportion to the tensor's scale (a fixed
        # atol of 1e-5 failed by 1.9e-5 on one of 481,280 logits, of magnitude up to 32, on an
        # AMD EPYC box)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_train_video_target_runs_resumes_and_writes_a_video_llava(tmp_path):
    from specvlm.world.train_target.video import train_video_target

    out = tmp_path / "run"
    first = train_video_target(out, "video-tiny", steps=4, stop_at=2, progress=False)
    assert first["steps"] == 2 and first["model"] is None
    with pytest.raises(InputError, match="holds a run already"):
        train_video_target(out, "video-tiny", steps=4, progress=False)
    r = train_video_target(out, "video-tiny", steps=4, resume=True, progress=False)
    assert r["steps"] == 4 and len(r["losses"]) == 4
    assert all(np.isfinite(r["losses"]))
    start_video, _ = _towers(out / "init")  # the video tower is frozen by default
    assert all(torch.equal(v, start_video[k].half()) for k, v in _towers(r["model"])[0].items())
    engine = api.load(target=r["model"])
    assert isinstance(engine.target, VideoLlavaTarget) and engine.target.num_frames == 2
    frames = render_clip(world_sample("test", 0, "video"), 128)
    out_ = engine.generate("what moves?", video=frames, max_new_tokens=4, speculative=False)
    assert len(out_.token_ids) >= 1
    # a trained video target as --init: training continues from its weights
    more = train_video_target(tmp_path / "more", "video-tiny", steps=2, init=r["model"],
                              progress=False)  # fmt: skip
    assert more["steps"] == 2 and more["first_loss"] < r["first_loss"]
    with pytest.raises(InputError, match="samples 2 frames a clip"):
        train_video_target(tmp_path / "x", "video-tiny", steps=2, init=r["model"], num_frames=4,
                           progress=False)  # fmt: skip


def _towers(folder) -> tuple[dict, dict]:
    """The video tower's and the image tower's weights in a Video-LLaVA folder."""
    from safetensors.torch import load_file

    weights = load_file(Path(folder) / "model.safetensors")
    pick = lambda name: {k.split(".", 2)[2]: v for k, v in weights.items() if name in k}  # noqa: E731
    return pick("video_tower."), pick("image_tower.")


def test_a_trained_video_tower_gets_gradients_through_both_forwards(folder):
    """With the video tower's parameters trainable, both training forwards carry the answer
    loss's gradient into it (and none into the image tower); frozen, it keeps no activations."""
    from transformers import VideoLlavaForConditionalGeneration

    from specvlm.world.train_target.model import normalize
    from specvlm.world.train_target.video import shared_prefix_forward, video_forward

    model = VideoLlavaForConditionalGeneration.from_pretrained(folder).train()
    model.requires_grad_(False)
    frames = render_clip(world_sample("train", 1, "video"), 128)[:8]
    pixels = normalize(torch.from_numpy(np.stack([np.asarray(f) for f in frames]))[None])
    ids = api.load(target=folder).target.prepare("what moves?", None, video=frames).input_ids
    ids = ids[None].repeat(2, 1)  # two rows of one clip: a shared-prefix group
    pixels = pixels.repeat(2, 1, 1, 1, 1)
    for forward in (video_forward, shared_prefix_forward):
        assert not forward(model, ids, pixels)[1].requires_grad  # frozen: no graph kept
    model.model.video_tower.requires_grad_(True)
    for forward in (video_forward, shared_prefix_forward):
        model.zero_grad()
        logits, feats, _ = forward(model, ids, pixels)
        assert feats.requires_grad
        logits[:, -1].logsumexp(-1).sum().backward()
        grads = [p.grad for p in model.model.video_tower.parameters()]
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
        assert all(p.grad is None for p in model.model.image_tower.parameters())


def test_train_tower_writes_a_trained_video_tower_and_the_image_tower_unchanged(tmp_path):
    from specvlm.world.train_target.video import train_video_target

    out = tmp_path / "run"  # lr 1e-2: two steps of 3e-4 can hide under the fp16 rounding
    r = train_video_target(out, "video-tiny", steps=2, progress=False, train_tower=True, lr=1e-2)
    start_video, start_image = _towers(out / "init")
    video, image = _towers(r["model"])
    moved = [k for k in start_video if not torch.equal(video[k], start_video[k].half())]
    assert len(moved) > len(start_video) // 2, moved
    assert all(torch.equal(image[k], start_image[k].half()) for k in start_image)


def test_motion_labels_say_how_each_covered_patch_moved_since_the_frame_before():
    from specvlm.world.clips import Clip, Track
    from specvlm.world.scenes import Background, SceneObject
    from specvlm.world.train_target.patches import MOTION_CLASSES, motion_class, motion_labels

    assert [motion_class(*d) for d in ((0.02, 0), (-0.01, 0.01), (0, 0))] == [
        MOTION_CLASSES.index(c) for c in ("right", "down-left", "still")
    ]
    mover = SceneObject("circle", "red", "large", 0.2, 0.2, 1)  # right, 0.055 a frame
    still = SceneObject("square", "blue", "large", 0.75, 0.75, 0)
    late = SceneObject("star", "green", "large", 0.25, 0.75, 2)  # appears at clip frame 3
    clip = Clip((Track(mover, "right", "fast"), Track(still), Track(late, "up", "slow", 3)),
                Background(), n_frames=8)  # fmt: skip
    labels = motion_labels(clip, [0, 2, 4, 6], 8).reshape(4, 8, 8)  # (frames, rows, columns)
    assert (labels[0] == -1).all()  # nothing seen before the first frame
    right, up = MOTION_CLASSES.index("right"), MOTION_CLASSES.index("up")
    still_class = MOTION_CLASSES.index("still")
    for k, x in ((1, 0.2 + 2 * 0.055), (2, 0.2 + 4 * 0.055)):
        row, col = int(0.2 * 8), int(x * 8)  # the mover's centre patch in frame k
        assert labels[k, row, col] == right
        assert labels[k, 6, 6] == still_class  # the still square's centre patch
        assert labels[k, 0, 7] == 0  # an empty corner
    assert labels[2, 6, 2] == -1  # the star appeared after frame 2: no motion seen yet
    assert labels[3, int((0.75 - 3 * 0.025) * 8), 2] == up  # seen in frames 4 and 6: up
    assert set(np.unique(labels[1:])) <= {-1, 0, still_class, right, up}

    # since the first sampled frame each object is in: the same classes here (the tracks keep
    # their directions), but the star is labelled from frame 4 on against its place there
    since = motion_labels(clip, [0, 2, 4, 6], 8, span="clip").reshape(4, 8, 8)
    assert (since[0] == -1).all() and since[2, 6, 2] == -1
    assert since[3, int((0.75 - 3 * 0.025) * 8), 2] == up
    assert since[2, int(0.2 * 8), int((0.2 + 4 * 0.055) * 8)] == right
    assert since[1, 6, 6] == since[3, 6, 6] == still_class

    # a bounce (x 0.70, 0.81, 0.85, 0.74, 0.685 in the sampled frames): a step label follows
    # the new heading at once, a clip label only once the object is back behind where it began
    bouncer = Clip((Track(SceneObject("circle", "red", "large", 0.7, 0.2, 1), "right", "fast"),),
                   Background(), n_frames=8)  # fmt: skip
    left = MOTION_CLASSES.index("left")
    for span, want in (("step", [right, right, left, left]), ("clip", [right, right, right, left])):
        got = motion_labels(bouncer, [0, 2, 4, 6, 7], 8, span=span)[1:]
        assert [set(row[row > 0].tolist()) for row in got] == [{c} for c in want], span
    with pytest.raises(InputError, match="motion span 'frame'"):
        motion_labels(clip, [0, 2], 8, span="frame")


def test_the_forwards_return_a_layers_patch_states_for_the_motion_loss(folder):
    """With `motion_layer`, both training forwards add that layer's states at every frame's
    patch tokens (the CLS left out): the same in both, and the ones `transformers` computes."""
    from transformers import VideoLlavaForConditionalGeneration

    from specvlm.world.train_target.losses import MotionHead
    from specvlm.world.train_target.model import normalize
    from specvlm.world.train_target.video import shared_prefix_forward, video_forward

    model = VideoLlavaForConditionalGeneration.from_pretrained(folder).eval()
    frames = render_clip(world_sample("train", 1, "video"), 128)[:8]
    pixels = normalize(torch.from_numpy(np.stack([np.asarray(f) for f in frames]))[None])
    target = api.load(target=folder).target
    rows = [target.prepare(q, None, video=frames).input_ids for q in ("what moves?", "why?")]
    T = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r.new_zeros(T - len(r))]) for r in rows])  # (2, T)
    pixels = pixels.repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        a = video_forward(model, ids, pixels, motion_layer=3)
        b = shared_prefix_forward(model, ids, pixels, motion_layer=3)
        theirs = model(input_ids=ids, pixel_values_videos=pixels, output_hidden_states=True)
    assert len(a) == len(b) == 5 and a[3] is None and b[3] is None
    assert a[4].shape == (2, 8, 64, model.config.text_config.hidden_size)
    video = ids == model.config.video_token_id  # (2, T)
    want = theirs.hidden_states[3][video].reshape(2, 8, 65, -1)[:, :, 1:]
    torch.testing.assert_close(a[4], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b[4], want, rtol=1e-4, atol=1e-4)
    labels = torch.full((2, 8, 64), -1)
    labels[:, 1:, :3] = torch.tensor([0, 1, 5])
    loss, acc = MotionHead(want.shape[-1])(a[4], labels)
    assert loss.item() > 0 and 0 <= acc.item() <= 1


def test_the_motion_loss_trains_a_head_and_the_language_model_and_resumes(tmp_path):
    from specvlm.world.train_target.video import train_video_target

    out = tmp_path / "run"
    first = train_video_target(out, "video-tiny", steps=3, stop_at=2, progress=False,
                               motion_weight=1.0, motion_layer=2)  # fmt: skip
    assert len(first["motion_losses"]) == 2 and all(m > 0 for m in first["motion_losses"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("motion_head.") for k in state["model"])
    r = train_video_target(out, "video-tiny", steps=3, resume=True, progress=False,
                           motion_weight=1.0, motion_layer=2)  # fmt: skip
    assert r["steps"] == 3 and len(r["motion_losses"]) == 3 and r["model"] is not None
    from safetensors.torch import load_file

    assert not any("motion" in k for k in load_file(Path(r["model"]) / "model.safetensors"))
    with pytest.raises(InputError, match="motion_layer 99"):
        train_video_target(tmp_path / "bad", "video-tiny", steps=2, progress=False,
                           motion_weight=1.0, motion_layer=99)  # fmt: skip


def test_eval_target_scores_clips_by_the_same_rules(folder):
    """Every family is asked about each clip and scored; the untrained video target's answers
    are whatever they are, but the report is complete and each item carries its verdict."""
    from specvlm.world.evaluate import evaluate_target, format_report, make_items, score

    closed, describe = make_items("test", 12, 128, "video", 8)
    assert {it.family for it in closed} == {
        "conversation",
        "multiple_choice",
        "reasoning",
        "multiturn",
    }
    assert len(describe) == 12 and all(len(it.image) == 8 for it in describe)
    for it in closed:  # the reference answer is always right by the rules that score it
        assert score(it.family, it.meta, it.reference), (it.family, it.meta, it.reference)
    r = evaluate_target(folder, "test", 1, max_description_tokens=16, progress=False, kind="video")
    assert r["kind"] == "video" and r["closed_count"] >= 4 and r["description_count"] == 1
    assert "all closed questions" in format_report(r)
    with pytest.raises(InputError, match="does not read video"):
        evaluate_target(embedded.embedded_target(), "test", 1, progress=False, kind="video")


def test_world_video_suites_bench_a_video_target(folder, tmp_path):
    """`world-video` items carry their clip as a frames folder; plain, eaglevlm and
    `transformers`' own methods decode them on a Video-LLaVA, all to the same tokens."""
    from specvlm.bench import runner
    from specvlm.bench.methods import BenchContext, build_methods
    from specvlm.bench.suites import load_suite
    from specvlm.train.quickfit import fit_head_to_target

    items = load_suite("world-video", n=5, cache_dir=tmp_path)
    assert [it.suite for it in items] == [
        "world-video-detailed", "world-video-conversation", "world-video-reasoning",
        "world-video-mc", "world-video-multiturn",
    ]  # fmt: skip
    for it in items:
        assert it.images == () and it.video.is_dir() and len(list(it.video.glob("*.png"))) >= 8
        assert it.messages[0]["content"].startswith("<video>\n")
    frames = render_clip(world_sample("test", 0, "video"), 128)
    head = fit_head_to_target(
        folder, tmp_path / "d", prompts=[("what moves?", [], frames)], steps=20
    )
    engine = api.Engine(api.load(target=folder).target, head, target_dir=folder)
    ctx = BenchContext(engine=engine, target_dir=folder)
    methods = build_methods(["eaglevlm", "hf-plain", "hf-lookup"], ctx)
    records = runner.run_bench(methods, items[:2], max_new_tokens=12, progress=False)
    assert all(r["identical"] for r in records), [(r["method"], r.get("error")) for r in records]
    assert {r["method"] for r in records} == {"plain", "eaglevlm", "hf-plain", "hf-lookup"}


def test_video_data_with_drills_adds_one_drill_per_clip_next_to_its_records():
    from dataclasses import replace

    from transformers import AutoTokenizer

    from specvlm.world.train_target.video import VIDEO_CONFIGS, build_video_data

    tok = AutoTokenizer.from_pretrained(embedded.embedded_target())
    cfg = VIDEO_CONFIGS["video-tiny"]
    plain = build_video_data(cfg, tok, progress=False)
    drilled = build_video_data(replace(cfg, drill_turns=4), tok, progress=False)
    assert drilled["family"].count("drill") == cfg.n_clips
    assert len(drilled["ids"]) == len(plain["ids"]) + cfg.n_clips
    assert drilled["scene"].tolist() == [c for c in range(cfg.n_clips) for _ in range(6)]
    kept = [k for k, f in enumerate(drilled["family"]) if f != "drill"]  # the records unchanged
    assert all(torch.equal(drilled["ids"][k], a) for k, a in zip(kept, plain["ids"], strict=True))
    for k, f in enumerate(drilled["family"]):
        if f == "drill":  # four answers to learn: four spans of the answer mask
            m = drilled["masks"][k].numpy()
            assert int((m[1:] & ~m[:-1]).sum()) + int(m[0]) == 4


def test_video_data_names_change_with_the_data_and_old_checkpoints_still_resume(tmp_path):
    """Step labels without drills keep the data file name they had before spans and drills
    existed; either setting gives another. A checkpoint written before a setting existed
    resumes when the run asks for its default, and refuses another value."""
    import hashlib
    import json
    from dataclasses import asdict, replace

    from specvlm.world.language import ANSWERS_VERSION
    from specvlm.world.train_target.run import check_resume_config
    from specvlm.world.train_target.video import VIDEO_CONFIGS, video_data_path

    cfg = VIDEO_CONFIGS["video"]
    before = {"n_clips": 2000, "num_frames": 8, "image_size": 128, "motion": 1}
    key = hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    assert video_data_path(cfg, tmp_path).name == f"data-video-a{ANSWERS_VERSION}-2000-{key}.pt"
    names = {video_data_path(c, tmp_path) for c in (cfg, replace(cfg, motion_span="clip"),
             replace(cfg, drill_turns=6), replace(cfg, drill_turns=4))}  # fmt: skip
    assert len(names) == 4

    new = ("motion_span", "drill_turns", "letter_weight", "verdict_weight")
    old = {k: v for k, v in asdict(cfg).items() if k not in new}
    check_resume_config(old, cfg, tmp_path / "checkpoint.pt")  # the defaults: resumes
    with pytest.raises(InputError, match="drill_turns"):
        check_resume_config(old, replace(cfg, drill_turns=6), tmp_path / "checkpoint.pt")


def test_the_video_recipe_weighs_each_multiple_choice_letter_in_the_world_tokenizer(tmp_path):
    """--letter-weight with --config video: every clip's multiple-choice answer has its option
    letter found (the world tokenizer's token that holds the letter the answer gives, after
    its content), weighted there and nowhere else; a run with the weight trains."""
    from transformers import AutoTokenizer

    from specvlm.world.grammar import option_letter_at
    from specvlm.world.train_target.video import (
        VIDEO_CONFIGS,
        build_video_data,
        train_video_target,
    )
    from specvlm.world.train_target.weights import mc_letter_positions, weigh_answers

    tok = AutoTokenizer.from_pretrained(embedded.embedded_target())
    cfg = VIDEO_CONFIGS["video-tiny"]
    data = build_video_data(cfg, tok, progress=False)
    pos = mc_letter_positions(data, tok).tolist()
    mc = [k for k, f in enumerate(data["family"]) if f == "multiple_choice"]
    assert len(mc) == cfg.n_clips and all(pos[k] >= 0 for k in mc)
    assert all(p == -1 for k, p in enumerate(pos) if k not in mc)
    for k in mc:
        answer = np.flatnonzero(data["masks"][k].numpy())
        letter, _ = option_letter_at(tok.decode(data["ids"][k][answer].tolist()))
        before = tok.decode(data["ids"][k][answer[0] : pos[k]].tolist())
        assert before.strip(), before  # content first: words come before the letter
        assert letter in tok.decode([int(data["ids"][k][pos[k]])])
    weigh_answers(data, tok, 4.0, 1.0, "video")
    for k, w in enumerate(data["token_weights"]):
        if k in mc:
            assert w[pos[k]] == 4.0 and int((w != 1).sum()) == 1
        else:
            assert w is None
    r = train_video_target(tmp_path / "run", "video-tiny", steps=2, progress=False,
                           letter_weight=4.0)  # fmt: skip
    assert r["steps"] == 2 and np.isfinite(r["losses"]).all()
