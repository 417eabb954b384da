"""Target adapter for the Video-LLaVA family (`VideoLlavaForConditionalGeneration`).

Video-LLaVA is LLaVA with two vision towers in front of one projector and one Llama language
model: an image goes through the image tower (CLS dropped under the "default" feature-select
strategy: P tokens), a video's F frames through the video tower (each frame's CLS kept: P + 1
tokens a frame, F * (P + 1) in all), both through the shared projector. So this adapter is
`LlavaTarget` with its own prompt side and visual merge; the language model, the KV cache, tree
verification and commit are LLaVA's, unchanged (inherited), as is the decoding loop.

- Prompt: `<image>` and `<video>` placeholders, each expanded to its visual tokens by the rule
  `VideoLlavaProcessor` applies (`replace_image_token` / `replace_video_token`).
- Frames: `specvlm.media.load_video` reads a folder of frames, a list of frames, a frame array or
  a video file (PyAV), sampled uniformly to at most `num_frames`: the checkpoint's video
  processor's `num_frames` if it sets one, else 8 (Video-LLaVA's training and model card:
  np.arange(0, total, total / 8)). Shorter clips are used whole, as the processor takes them.
- Pixels: each frame is preprocessed by `VideoLlavaImageProcessor` (PIL and numpy) with the
  checkpoint's video-processor settings (resize, centre crop, rescale, CLIP normalisation),
  images by the checkpoint's image processor. `transformers`' own `VideoLlavaVideoProcessor`
  does the same steps with torchvision, which this project does not require: resized pixels may
  differ from it in the last bits. Losslessness is unaffected: the engine and `transformers`'
  `generate` are compared on the same pixel tensors.
- Prefill: both towers and the projector run once; their rows replace the placeholders' rows of
  the prompt's embeddings; `Prefill.visual` names each image's span on its (1, h, w) patch grid
  and the video's span on a (F, 1, P + 1) grid (one row a frame, CLS first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from specvlm.errors import ImageError, InputError, ModelFolderError, PromptError
from specvlm.hf_quiet import quiet_transformers
from specvlm.media import load_images, load_video
from specvlm.target.base import Prompt, VisualLayout, visual_layout
from specvlm.target.llava import LlavaTarget, read_config

ARCHITECTURE = "VideoLlavaForConditionalGeneration"
DEFAULT_NUM_FRAMES = 8  # Video-LLaVA's frames a clip (training, model card)
# the VideoLlavaImageProcessor settings a video processor's config may set for its frames
FRAME_SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


@dataclass(frozen=True)
class VideoLlavaProcessing:
    """What `VideoLlavaProcessor` would do with a prompt, read from the checkpoint's files.

    Read from processor_config.json (its image / video processor settings nested, as
    `transformers` 5 saves them) or the older separate preprocessor_config.json and
    video_preprocessor_config.json; what they leave unset comes from the model's config (patch
    size, feature-select strategy), else `VideoLlavaProcessor`'s defaults."""

    patch_size: int = 14
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 1  # CLS
    image_token: str = "<image>"
    video_token: str = "<video>"
    num_frames: int = DEFAULT_NUM_FRAMES
    frame_settings: dict[str, Any] = field(default_factory=dict)  # FRAME_SETTINGS keys only
    chat_template: str | None = None

    @classmethod
    def read(cls, folder: Path, tokenizer: Any, model_config: Any) -> VideoLlavaProcessing:
        proc = _json(folder / "processor_config.json")
        video = proc.get("video_processor") or _json(folder / "video_preprocessor_config.json")
        frame_settings = {k: video[k] for k in FRAME_SETTINGS if k in video}
        if not frame_settings:  # no video processor config: its frames as the images
            image = proc.get("image_processor") or _json(folder / "preprocessor_config.json")
            frame_settings = {k: image[k] for k in FRAME_SETTINGS if k in image}
        # the processor's template first (what `processor.apply_chat_template` renders)
        template = proc.get("chat_template")
        if not template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        template = template or _json(folder / "chat_template.json").get("chat_template")
        template = template or getattr(tokenizer, "chat_template", None)
        defaults = cls()
        return cls(
            patch_size=int(proc.get("patch_size") or model_config.vision_config.patch_size),
            vision_feature_select_strategy=proc.get("vision_feature_select_strategy")
            or model_config.vision_feature_select_strategy,
            num_additional_image_tokens=int(
                proc.get("num_additional_image_tokens", defaults.num_additional_image_tokens)
            ),
            image_token=getattr(tokenizer, "image_token", None)
            or proc.get("image_token", defaults.image_token),
            video_token=getattr(tokenizer, "video_token", None)
            or proc.get("video_token", defaults.video_token),
            num_frames=int(video.get("num_frames") or DEFAULT_NUM_FRAMES),
            frame_settings=frame_settings,
            chat_template=template or None,
        )


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"cannot read {path}: {e}") from e


@dataclass
class VideoPrompt(Prompt):
    """A Video-LLaVA prompt: LLaVA's, plus the video's frames."""

    pixel_values_videos: torch.Tensor | None = None  # (1, F, 3, H, W)
    n_frames: int = 0


class VideoLlavaTarget(LlavaTarget):
    """A Video-LLaVA checkpoint as a verifier: images and a video at prefill, then LLaVA's
    verify / commit on the same Llama language model."""

    ARCHITECTURE = ARCHITECTURE
    FAMILY = "Video-LLaVA"
    modalities: tuple[str, ...] = ("text", "image", "video")

    def __init__(
        self,
        folder: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        aux_layers: tuple[int, ...] = (),
    ):
        from safetensors import SafetensorError
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            VideoLlavaForConditionalGeneration,
            VideoLlavaImageProcessor,
        )

        folder = Path(folder)
        read_config(folder)
        dtype = dtype or torch.float32
        with quiet_transformers():
            try:
                self.model = VideoLlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
            except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # truncated too
                raise ModelFolderError(
                    f"cannot load the Video-LLaVA weights from {folder}: {e}"
                ) from e
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                self.image_processor = AutoImageProcessor.from_pretrained(folder)
                self.processing = VideoLlavaProcessing.read(
                    folder, self.tokenizer, self.model.config
                )
                self.frame_processor = VideoLlavaImageProcessor(**self.processing.frame_settings)
            except (OSError, ValueError, TypeError) as e:
                raise ModelFolderError(
                    f"cannot load the tokenizer/processor from {folder}: {e}; a Video-LLaVA "
                    "folder needs tokenizer files and processor_config.json (or "
                    "preprocessor_config.json)"
                ) from e
        self._bind_model(folder, device, dtype, aux_layers)
        self.video_token_id = int(self.model.config.video_token_id)
        for name, token, token_id in (
            ("image", self.processing.image_token, self.image_token_id),
            ("video", self.processing.video_token, self.video_token_id),
        ):
            if self.tokenizer.convert_tokens_to_ids(token) != token_id:
                raise ModelFolderError(
                    f"{folder}: the tokenizer's {name} token {token!r} is id "
                    f"{self.tokenizer.convert_tokens_to_ids(token)} but config.json says "
                    f"{token_id}; the tokenizer and the model do not belong together"
                )

    @property
    def num_frames(self) -> int:
        """The most frames a video is sampled to."""
        return self.processing.num_frames

    def set_num_frames(self, n: int) -> None:
        """Sample videos to at most `n` frames from now on, instead of the checkpoint's count
        (the model reads any count: F x (P + 1) visual tokens; what it was trained on is up to
        the checkpoint)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"the frame count must be a positive integer, got {n!r}")
        self.processing = replace(self.processing, num_frames=n)

    # ---- prompt -------------------------------------------------------------------------
    def prepare(
        self, prompt: str | list[dict[str, Any]], images: list[Any], video: Any = None
    ) -> VideoPrompt:
        """One user turn (images, then the video, put first unless the prompt has its own
        placeholders), or a chat so far: [{"role", "content"}, ...] ending with a user turn,
        placeholders inline. video: see `specvlm.media.load_video` (one video a request)."""
        if isinstance(prompt, list | tuple):
            return self._prepare_chat(list(prompt), images, video)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt must be a non-empty string")
        pil = load_images(images)
        frames = [] if video is None else load_video(video, self.num_frames)
        image_token, video_token = self.processing.image_token, self.processing.video_token
        if prompt.count(image_token) not in (0, len(pil)):
            raise ImageError(
                f"the prompt has {prompt.count(image_token)} '{image_token}' placeholders but "
                f"{len(pil)} images were given; give one image per placeholder, or no "
                "placeholders and they are put before the prompt"
            )
        if prompt.count(video_token) not in (0, int(bool(frames))):
            raise PromptError(
                f"the prompt has {prompt.count(video_token)} '{video_token}' placeholders but "
                f"{'one video was' if frames else 'no video was'} given; a request takes one "
                "video, at its placeholder or (with none) before the prompt"
            )
        content: list[dict[str, Any]] = []
        if image_token not in prompt:
            content += [{"type": "image"} for _ in pil]
        if frames and video_token not in prompt:
            content.append({"type": "video"})
        content.append({"type": "text", "text": prompt})
        text = self.render_chat([{"role": "user", "content": content}], add_generation_prompt=True)
        placed = (text.count(image_token), text.count(video_token))
        if placed != (len(pil), int(bool(frames))):
            raise ImageError(
                f"this model's chat template placed {placed[0]} images and {placed[1]} videos, "
                f"but {len(pil)} images and {int(bool(frames))} videos were given; it cannot "
                "take them this way"
            )
        return self.tokenize(text, pil, frames or None)

    def _prepare_chat(
        self, messages: list[dict[str, Any]], images: list[Any], video: Any = None
    ) -> VideoPrompt:
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        accepted = (
            "a chat prompt must be a list of {'role': 'user'|'assistant'|'system', 'content': "
            "str or a list of {'type': 'text', 'text': ...} / {'type': 'image'} / "
            "{'type': 'video'} parts} ending with a user turn"
        )
        if not messages or roles[-1] != "user" or not set(roles) <= {"user", "assistant", "system"}:
            raise PromptError(f"{accepted}; got roles {roles}")
        for i, m in enumerate(messages):
            content = m.get("content")
            parts_ok = isinstance(content, list) and all(
                isinstance(c, dict) and c.get("type") in ("text", "image", "video") for c in content
            )
            if not (isinstance(content, str) or parts_ok):
                raise PromptError(f"{accepted}; message {i} has content {content!r}")
        text = self.render_chat(messages, add_generation_prompt=True)
        return self.tokenize(text, images, video)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """Messages {"role", "content": str or content items} -> text; string content may hold
        inline `<image>` / `<video>` placeholders."""
        messages = [
            {**m, "content": [{"type": "text", "text": m["content"]}]}
            if isinstance(m["content"], str)
            else m
            for m in messages
        ]
        if self.processing.chat_template:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.processing.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        # a base model without a template: the turns' texts, one after another
        marks = {"image": self.processing.image_token, "video": self.processing.video_token}
        return "".join(
            marks[item["type"]] + "\n" if item["type"] in marks else item.get("text", "")
            for m in messages
            for item in m["content"]
        )

    def tokenize(self, text: str, images: list[Any], video: Any = None) -> VideoPrompt:
        """Rendered text with one placeholder per image and per video -> ids (placeholders
        expanded to their visual tokens) + pixels."""
        pil = load_images(images)
        frames = [] if video is None else load_video(video, self.num_frames)
        image_token, video_token = self.processing.image_token, self.processing.video_token
        if text.count(image_token) != len(pil):
            raise ImageError(
                f"the text has {text.count(image_token)} image placeholders but {len(pil)} "
                "images were given"
            )
        if text.count(video_token) != int(bool(frames)):
            raise PromptError(
                f"the text has {text.count(video_token)} video placeholders but "
                f"{int(bool(frames))} videos were given (a request takes at most one)"
            )
        images_px = self._pixels(self.image_processor, pil)  # (n_images, 3, H, W) or None
        frames_px = self._pixels(self.frame_processor, frames)  # (F, 3, H, W) or None
        # each placeholder -> its visual tokens, as VideoLlavaProcessor expands them
        pieces, k = [], 0
        for part in re.split(f"({re.escape(image_token)}|{re.escape(video_token)})", text):
            if part == image_token:
                pieces.append(image_token * self._image_tokens(images_px[k]))
                k += 1
            elif part == video_token:
                pieces.append(video_token * (len(frames) * self._frame_tokens(frames_px[0])))
            else:
                pieces.append(part)
        # a chat template that writes the BOS itself must not get a second one from the tokenizer
        bos = self.tokenizer.bos_token
        own_bos = bool(bos) and text.startswith(bos)
        enc = self.tokenizer("".join(pieces), return_tensors="pt", add_special_tokens=not own_bos)
        input_ids = enc["input_ids"][0]
        if input_ids.shape[0] >= self.info.max_context:
            raise PromptError(
                f"the prompt is {input_ids.shape[0]} tokens (images and video included) but the "
                f"model's context is {self.info.max_context}; shorten it or use fewer images or "
                "frames"
            )
        dtype = self.info.dtype
        return VideoPrompt(
            text=text,
            input_ids=input_ids.to(self.device),
            pixel_values=None if images_px is None else images_px.to(self.device, dtype),
            n_images=len(pil),
            pixel_values_videos=None
            if frames_px is None
            else frames_px[None].to(self.device, dtype),  # (1, F, 3, H, W)
            n_frames=len(frames),
        )

    @staticmethod
    def _pixels(processor: Any, images: list[Any]) -> torch.Tensor | None:
        """(n, 3, H, W) float32 from an image processor, or None for no images."""
        if not images:
            return None
        from transformers import VideoLlavaImageProcessor

        extra = {}
        if isinstance(processor, VideoLlavaImageProcessor):
            extra["return_legacy_image_output"] = False  # "pixel_values", not the old key
        return processor(images, return_tensors="pt", **extra)["pixel_values"]

    def _image_tokens(self, pixels: torch.Tensor) -> int:
        """Visual tokens of one image (3, H, W): its patches (+ CLS unless "default" drops it)."""
        p = self.processing
        n = (pixels.shape[-2] // p.patch_size) * (pixels.shape[-1] // p.patch_size)
        return n + p.num_additional_image_tokens - (p.vision_feature_select_strategy == "default")

    def _frame_tokens(self, pixels: torch.Tensor) -> int:
        """Visual tokens of one video frame (3, H, W): its patches and CLS, always kept."""
        p = self.processing
        n = (pixels.shape[-2] // p.patch_size) * (pixels.shape[-1] // p.patch_size)
        return n + p.num_additional_image_tokens

    # ---- prefill ------------------------------------------------------------------------
    def _prompt_embeds(self, prompt: Prompt) -> tuple[torch.Tensor, VisualLayout]:
        """The language model's input (T, d): the image and video towers' projected rows in their
        placeholders' rows; and where each image's and the video's tokens sit."""
        embeds = self.embed(prompt.input_ids)  # (T, d)
        spans = []
        if prompt.pixel_values is not None:
            out = self.model.model.get_image_features(
                pixel_values=prompt.pixel_values, return_dict=True
            )
            per_image = list(out.pooler_output)  # n_images x (P, d)
            embeds = self._merge(embeds, prompt.input_ids, self.image_token_id, per_image)
            grids = [self._image_grid(v.shape[0]) for v in per_image]
            spans += visual_layout(prompt.input_ids, self.image_token_id, grids).spans
        videos = getattr(prompt, "pixel_values_videos", None)  # (1, F, 3, H, W)
        if videos is not None:
            out = self.model.model.get_video_features(pixel_values_videos=videos, return_dict=True)
            frames = out.pooler_output  # (F, P + 1, d): each frame's CLS kept
            embeds = self._merge(
                embeds, prompt.input_ids, self.video_token_id, [frames.flatten(0, 1)]
            )
            grid = (frames.shape[0], 1, frames.shape[1])  # one row a frame
            spans += visual_layout(prompt.input_ids, self.video_token_id, [grid]).spans
        return embeds, VisualLayout(tuple(sorted(spans, key=lambda s: s.start)))

    def _merge(
        self, embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, visual: list
    ) -> torch.Tensor:
        """embeds (T, d) with the rows of `token_id` replaced by the visual rows, in order."""
        rows = torch.cat(visual, dim=0).to(embeds.dtype)  # (n, d)
        slots = input_ids == token_id  # (T,)
        if int(slots.sum()) != rows.shape[0]:
            kind = "video" if token_id == self.video_token_id else "image"
            raise PromptError(
                f"{int(slots.sum())} {kind} placeholder tokens but {rows.shape[0]} visual tokens; "
                "the processor settings and the model config disagree on the image size"
            )
        embeds = embeds.clone()
        embeds[slots] = rows
        return embeds

    def _image_grid(self, n_tokens: int) -> tuple[int, int, int]:
        """An image's (frames, height, width) token grid: the (1, side, side) patch grid with the
        CLS dropped ("default"), else one row (CLS kept)."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return (1, side, side) if n_tokens == side * side else (1, 1, n_tokens)

    # ---- identity -----------------------------------------------------------------------
