"""The Video-LLaVA adapter: greedy output == transformers' own generate, token for token, on a
tiny VideoLlavaForConditionalGeneration built in code; video from a folder, a list, an array or a
file gives the same prompt; bad video input is refused with a clear message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import VideoLlavaForConditionalGeneration

import specvlm
from specvlm.api import Engine
from specvlm.config import TreeConfig
from specvlm.draft.eagle import EagleConfig, EagleHead
from specvlm.media import load_video, sample_frame_indices
from specvlm.target import load_target, modalities
from specvlm.target.video_llava import VideoLlavaTarget
from specvlm.tiny_video import build_tiny_video_llava
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image

NEW_TOKENS = 48
PROMPT = "describe the image in detail."
N_FRAMES = 4  # the tiny checkpoint's video processor samples to 4 frames


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-video") / "video-llava"
    return build_tiny_video_llava(folder, num_layers=3, with_eos=False, num_frames=N_FRAMES)


@pytest.fixture(scope="module")
def target(video_dir):
    return load_target(video_dir)


@pytest.fixture(scope="module")
def hf_model(video_dir):
    return VideoLlavaForConditionalGeneration.from_pretrained(video_dir).eval()


def clip(n: int = 6, seed: int = 0) -> list[Image.Image]:
    """n noise frames of 40x52 (not the model's 32x32: resize and crop run)."""
    return [noise_image(seed * 100 + i) for i in range(n)]


def hf_greedy(model, prompt) -> tuple[list[int], float]:
    """transformers' greedy tokens on the engine's prompt tensors, and the smallest top-1/top-2
    logit gap along the way."""
    ids = prompt.input_ids[None]
    pixels = {}
    if prompt.pixel_values is not None:
        pixels["pixel_values"] = prompt.pixel_values
    if prompt.pixel_values_videos is not None:
        pixels["pixel_values_videos"] = prompt.pixel_values_videos
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        **pixels,
    )
    gaps = [float(s[0].topk(2).values.diff().abs()) for s in out.scores]
    return out.sequences[0, ids.shape[1] :].tolist(), min(gaps)


def test_the_adapter_reads_the_checkpoint(target):
    assert isinstance(target, VideoLlavaTarget)
    assert target.info.architecture == "VideoLlavaForConditionalGeneration"
    assert target.info.fingerprint["architecture"] == "VideoLlavaForConditionalGeneration"
    assert target.num_frames == N_FRAMES
    assert "video" in modalities(target)


MEDIA = {
    "video": lambda: {"video": clip()},
    "image": lambda: {"images": [noise_image(7)]},
    "image+video": lambda: {"images": [noise_image(8)], "video": clip(seed=1)},
    "text": lambda: {},
}


@pytest.mark.parametrize("kind", list(MEDIA))
def test_greedy_equals_transformers(kind, target, hf_model):
    media = MEDIA[kind]()
    prompt = target.prepare(PROMPT, media.get("images"), video=media.get("video"))
    expected, min_gap = hf_greedy(hf_model, prompt)
    assert len(expected) == NEW_TOKENS
    assert min_gap > 1e-3, "the tiny target has a near-tie; exactness would be luck"
    assert len(set(expected)) > 8, "a degenerate answer would test little"

    plain = Engine(target, None).generate(
        PROMPT, max_new_tokens=NEW_TOKENS, speculative=False, **media
    )
    assert plain.token_ids == expected
    assert plain.stats.target_forwards == NEW_TOKENS - 1

    torch.manual_seed(0)
    head = EagleHead(EagleConfig.for_target(target.info, num_attention_heads=2)).eval()
    spec = Engine(target, head).generate(PROMPT, max_new_tokens=NEW_TOKENS, **media)
    assert spec.token_ids == expected


def test_video_prompt_layout(target):
    prompt = target.prepare(PROMPT, [noise_image(3)], video=clip())
    per_frame = (32 // 8) ** 2 + 1  # patches + CLS (kept for video frames)
    assert prompt.n_frames == N_FRAMES
    assert prompt.pixel_values_videos.shape == (1, N_FRAMES, 3, 32, 32)
    assert int((prompt.input_ids == target.video_token_id).sum()) == N_FRAMES * per_frame
    assert int((prompt.input_ids == target.image_token_id).sum()) == 16  # CLS dropped
    pre = target.prefill(prompt, capacity=prompt.input_ids.shape[0] + 1)
    image, video = pre.visual.spans
    assert (image.grid, video.grid) == ((1, 4, 4), (N_FRAMES, 1, per_frame))
    assert bool((prompt.input_ids[video.start : video.end] == target.video_token_id).all())
    assert bool((prompt.input_ids[image.start : image.end] == target.image_token_id).all())


def test_a_fitted_draft_is_exact_and_accepts_runs(target, hf_model, video_dir, tmp_path):
    video = clip(seed=2)
    expected, _ = hf_greedy(hf_model, target.prepare(PROMPT, None, video=video))
    fitted = fit_head_to_target(
        video_dir, tmp_path / "draft", prompts=[(PROMPT, [], video)], new_tokens=NEW_TOKENS
    )
    for tree in (TreeConfig(), TreeConfig(2, 2, 3)):
        engine = Engine(target, fitted, tree)
        out = engine.generate(PROMPT, video=video, max_new_tokens=NEW_TOKENS)
        assert out.token_ids == expected, tree
        assert out.stats.tau > 1.5 and max(out.stats.accept_lengths) >= 3, out.stats.to_dict()
        streamed = engine.stream(PROMPT, video=video, max_new_tokens=NEW_TOKENS)
        assert [t for piece in streamed for t in piece.token_ids] == expected


def test_cli_generate_reads_a_video(target, hf_model, video_dir, tmp_path, capsys):
    """`specvlm generate --video FOLDER` speculates with a draft and prints transformers' own
    greedy tokens for the same frames."""
    import json

    from specvlm.cli import main

    frames = clip(N_FRAMES, seed=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        frame.save(folder / f"{i:02d}.png")
    expected, _ = hf_greedy(hf_model, target.prepare(PROMPT, None, video=frames))
    fit_head_to_target(
        video_dir, tmp_path / "draft", prompts=[(PROMPT, [], frames)], new_tokens=NEW_TOKENS
    )
    argv = ["generate", "--target", str(video_dir), "--draft", str(tmp_path / "draft"), "--video"]
    argv += [str(folder), "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_ids"] == expected
    assert out["stats"]["tau"] > 1.5  # the draft was used, and accepted runs


def test_sample_frame_indices_follow_the_model_card():
    for total in range(8, 40):  # Video-LLaVA's card: np.arange(0, total, total / 8).astype(int)
        card = np.arange(0, total, total / 8).astype(int).tolist()
        assert sample_frame_indices(total, 8) == card
    assert sample_frame_indices(3, 8) == [0, 1, 2]  # a short clip is used whole


def write_video(path, frames: list[Image.Image]) -> None:
    """A lossless H.264 (RGB, crf 0) video file, so decoded frames equal the originals exactly.
    MP4 records its frame count; Matroska does not (the reader counts packets)."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=10, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def test_every_video_source_gives_the_same_prompt(target, tmp_path):
    frames = clip(12, seed=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # frame_10 sorts after frame_9 (by number, not text)
        frame.save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    write_video(tmp_path / "clip.mp4", frames)
    write_video(tmp_path / "clip.mkv", frames)
    sampled = [frames[i] for i in (0, 3, 6, 9)]  # 12 frames -> 4, uniformly
    reference = target.prepare(PROMPT, None, video=sampled)
    sources = {
        "folder": folder,
        "folder as str": str(folder),
        "list of images": frames,
        "list of paths": sorted(folder.glob("*.png"), key=lambda p: int(p.stem[6:])),
        "array": np.stack([np.asarray(f) for f in frames]),
        "list of arrays": [np.asarray(f) for f in frames],
        "mp4": tmp_path / "clip.mp4",
        "mkv": tmp_path / "clip.mkv",
    }
    for name, video in sources.items():
        prompt = target.prepare(PROMPT, None, video=video)
        assert torch.equal(prompt.input_ids, reference.input_ids), name
        assert torch.equal(prompt.pixel_values_videos, reference.pixel_values_videos), name
    # an explicit placeholder and a chat with a video part build the same prompt
    inline = target.prepare("<video>\n" + PROMPT, None, video=sampled)
    chat = target.prepare(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
        None,
        video=sampled,
    )
    for prompt in (inline, chat):
        assert torch.equal(prompt.input_ids, reference.input_ids)


def test_decoding_stops_at_the_last_sampled_frame_or_reports_the_end(tmp_path):
    from specvlm.media import _decode_frames

    frames = clip(10, seed=4)
    write_video(tmp_path / "clip.mp4", frames)
    got, ended = _decode_frames(tmp_path / "clip.mp4", [0, 5, 9])
    assert ended is None and [np.asarray(f).tolist() for f in got] == [
        np.asarray(frames[i]).tolist() for i in (0, 5, 9)
    ]
    # a header that over-counts (16 for 10): the reader learns the true count and samples again
    got, ended = _decode_frames(tmp_path / "clip.mp4", [0, 7, 14])
    assert ended == 10 and len(got) == 2


def test_bad_video_input_is_refused_clearly(target, tiny_dir, tmp_path):
    engine = Engine(target, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(specvlm.VideoError, match="has no frame images"):
        engine.generate(PROMPT, video=empty)
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video file at all" * 10)
    pytest.importorskip("av")
    with pytest.raises(specvlm.VideoError, match="cannot read .*broken.mp4 as a video"):
        engine.generate(PROMPT, video=tmp_path / "broken.mp4")
    with pytest.raises(specvlm.VideoError, match="video not found"):
        engine.generate(PROMPT, video=tmp_path / "missing.mp4")
    with pytest.raises(specvlm.VideoError, match="one image is not a video"):
        engine.generate(PROMPT, video=noise_image(0))
    with pytest.raises(specvlm.VideoError, match="no frames"):
        engine.generate(PROMPT, video=[])
    with pytest.raises(specvlm.VideoError, match="frame 1 of the video: image file not found"):
        engine.generate(PROMPT, video=[noise_image(0), tmp_path / "nope.png"])
    with pytest.raises(specvlm.VideoError, match=r"must be \(frames, height, width, 3\)"):
        engine.generate(PROMPT, video=np.zeros((32, 32, 3), np.uint8))  # one frame, no time axis
    with pytest.raises(specvlm.VideoError, match="frame 0 of the video: a frame array must"):
        engine.generate(PROMPT, video=np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(specvlm.PromptError, match="one video"):
        engine.generate("<video> then <video>", video=clip())
    with pytest.raises(specvlm.PromptError, match="no video was given"):
        engine.generate("<video> what happens?")
    with pytest.raises(specvlm.InputError, match="does not read events"):
        engine.generate(PROMPT, events={"x": [1]})
    llava = Engine(load_target(tiny_dir), None)
    with pytest.raises(specvlm.InputError, match="does not read video; it accepts a prompt and"):
        llava.generate(PROMPT, video=clip())


def test_a_video_file_without_pyav_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(specvlm.VideoError, match=r"pip install 'specvlm\[video\]'"):
        load_video(tmp_path / "clip.mp4", 8)


@pytest.mark.parametrize("operator", ["pool", "conv", "prune", "resampler", "text"])
def test_a_draft_with_a_visual_compressor_reads_the_video_spans(operator, target, hf_model):
    """Each image and the video reach the compressor as spans on their own grids; whatever it
    keeps, the output is the target's."""
    from specvlm.draft.compressor import CompressorConfig

    media = {"images": [noise_image(9)], "video": clip(seed=5)}
    expected, _ = hf_greedy(hf_model, target.prepare(PROMPT, media["images"], video=media["video"]))
    torch.manual_seed(0)
    config = CompressorConfig(mode="fixed", operators=(operator,))
    head = EagleHead(
        EagleConfig.for_target(target.info, num_attention_heads=2, compressor=config)
    ).eval()
    out = Engine(target, head).generate(PROMPT, max_new_tokens=NEW_TOKENS, **media)
    assert out.token_ids == expected


def test_the_hub_layout_of_processor_files_reads_the_same(target, video_dir, tmp_path):
    """Hub checkpoints (LanguageBind/Video-LLaVA-7B-hf) keep the image processor in
    preprocessor_config.json, no video processor settings and no patch size: the frames then
    take the image settings, the patch size comes from the model config, and 8 frames."""
    import json
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(video_dir, legacy)
    nested = json.loads((legacy / "processor_config.json").read_text())
    (legacy / "preprocessor_config.json").write_text(json.dumps(nested["image_processor"]))
    (legacy / "processor_config.json").write_text(
        json.dumps({"processor_class": "VideoLlavaProcessor"})
    )
    old = load_target(legacy)
    assert old.num_frames == 8 and old.processing.patch_size == 8
    video = clip(N_FRAMES, seed=6)  # no more than either samples to: used whole by both
    for media in ({"images": [noise_image(4)]}, {"video": video}):
        a = target.prepare(PROMPT, media.get("images"), video=media.get("video"))
        b = old.prepare(PROMPT, media.get("images"), video=media.get("video"))
        assert torch.equal(a.input_ids, b.input_ids)
        for key in ("pixel_values", "pixel_values_videos"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or torch.equal(x, y), key
    assert len(old.prepare(PROMPT, None, video=clip(10)).pixel_values_videos[0]) == 8
