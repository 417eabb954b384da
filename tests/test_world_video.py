"""The world video target's starting point (`world.video_target`): a Video-LLaVA assembled
from the embedded world target reads images exactly as that target does, and reads a world
clip as 8 frames of 65 tokens."""

from __future__ import annotations

import numpy as np
import pytest

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
