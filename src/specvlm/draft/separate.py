"""A separate small model drafting for the target, re-synchronized after every verification.

The drafter is another model with the target's tokenizer (a shallow LLaVA, or a model that
reads another modality, e.g. an event stream, for the same question), run through a target
adapter (`prefill` / `verify` / `commit` / `truncate`), with its own prompt and its own KV
cache. Each round it drafts a chain of its greedy tokens after the root, as `transformers`'
assisted generation does; the target verifies the chain in one forward as any tree.

Re-synchronization (what the public EventGPT -> Video-LLaVA attempt lacked): after every
verification the drafter's cache is rolled back to the accepted prefix (the drafts it fed and
the target kept stay; the rest is dropped) and the target's tokens it has not read (the bonus
token) are read first thing in the next round. So its cache always equals a fresh prefill of
its prompt plus the accepted text (`tests/test_separate_drafter.py` checks this).

Prefill hiding: with `concurrent=True`, `start` (called by the loop before the target's
prefill) runs the drafter's prefill on a worker thread while the target prefills; `begin`
waits for it. The drafter's prompt does not depend on the target's, so nothing is modelled: the
two prefills really overlap, sharing the machine's cores.

    drafter = SeparateDrafter(small, small.prepare(question, images), concurrent=True)
    decode(target, prompt, drafter=drafter, ...)

What the draft model reads is its own choice (`DrafterInput`, from `specvlm_drafter.json` in
its folder): the request's prompt and images (the default), or, for an event drafter, the
request's event stream drawn as one picture in place of the target's video.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specvlm.decoding.tree import DraftTree
from specvlm.errors import InputError
from specvlm.target.base import Prefill, Prompt, Target


def check_same_vocabulary(target: Target, drafter: Target, name: str = "the draft model") -> None:
    """A separate draft model must speak the target's token ids: same tokenizer vocabulary."""
    t_vocab = target.tokenizer.get_vocab()
    d_vocab = drafter.tokenizer.get_vocab()
    if t_vocab != d_vocab:
        differ = len(set(t_vocab.items()) ^ set(d_vocab.items()))
        raise InputError(
            f"{name} has another tokenizer than the target ({len(d_vocab)} vs {len(t_vocab)} "
            f"tokens, {differ} entries differ); a separate draft model must share the target's "
            "token ids"
        )


class PromptReader:
    """Reads a drafter's own prompt before the target's prefill (`start`): on the caller's
    thread, or (`concurrent`) on a worker thread that `wait` joins, raising there what the
    reading raised. Shared by the separate drafter and the cross-modal head."""

    def __init__(self, concurrent: bool) -> None:
        self.concurrent = concurrent
        self.started = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, read: Callable[[], None]) -> None:
        self.started = True
        if not self.concurrent:
            read()
            return

        def guarded() -> None:
            try:
                read()
            except BaseException as e:  # re-raised on the decoding thread, in `wait`
                self._error = e

        self._thread = threading.Thread(target=guarded)
        self._thread.start()

    def wait(self, raise_error: bool = True) -> None:
        """Join a reading still running; raise its error (unless `raise_error` is False: a
        request that ended before the drafter was needed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


class SeparateDrafter:
    """Drafts chains of `model`'s greedy tokens after the root (see the module docstring).

    model: the draft model's adapter (it owns its KV cache; one request at a time).
    prompt: the draft model's own prompt for this request (its template, its media).
    concurrent: prefill on a worker thread while the target prefills (`start`).
    """

    def __init__(self, model: Target, prompt: Prompt, *, concurrent: bool = False):
        self.model = model
        self.prompt = prompt
        self.concurrent = concurrent
        self.prompt_len = int(prompt.input_ids.shape[0])
        self.text: list[int] = []  # the true tokens after the prompt (target-produced), in order
        self.fed = 0  # how many of `text` are in the model's cache
        self.speculative: list[int] = []  # drafts fed into the cache after `text[:fed]`
        self._reader = PromptReader(concurrent)
        self.prefill_s = 0.0  # the drafter's own prefill time (on its thread when concurrent)
        self.drafting_s = 0.0  # its time in the rounds: reading the true tokens, drafting, rollback

    # ---- the drafter's prefill ------------------------------------------------------------
    def start(self, new_tokens: int) -> None:
        """Begin reading the drafter's prompt; room for `new_tokens` more positions. With
        `concurrent`, on a worker thread (the loop calls this before the target's prefill)."""
        capacity = self.prompt_len + new_tokens
        self._reader.start(lambda: self._prefill(capacity))

    def _prefill(self, capacity: int) -> None:
        start = time.perf_counter()
        self.model.prefill(self.prompt, capacity)
        self.prefill_s = time.perf_counter() - start

    def begin(self, prefill: Prefill, root: int, capacity: int) -> None:
        """Wait for the drafter's prefill (started by `start`, or run now) and take the root."""
        self._reader.wait()
        if not self._reader.started:  # the loop did not call start: read the prompt now
            self._prefill(self.prompt_len + capacity - int(prefill.features.shape[0]))
        self.text, self.fed, self.speculative = [root], 0, []

    def finish(self) -> None:
        """Wait for a prefill still running (a request that ended before `begin`), so that the
        model is free for the next request."""
        self._reader.wait(raise_error=False)

    # ---- a round -----------------------------------------------------------------------------
    def propose(self, root: int, depth: int, top_k: int, budget: int) -> DraftTree:
        """The chain root -> d_1 -> ... -> d_n, n = min(depth, budget - 1): the drafter reads
        the true tokens it has not read (ending with the root), then drafts greedily, feeding
        each draft but the last."""
        assert self.text and self.text[-1] == root, "observe() the previous round first"
        start = time.perf_counter()
        logits = self._feed(self.text[self.fed :])  # (V,) after the root
        self.fed = len(self.text)
        n = min(depth, budget - 1)
        chain: list[int] = []
        for i in range(n):
            chain.append(int(logits.argmax()))
            if i + 1 < n:
                logits = self._feed(chain[-1:])
        self.speculative = chain[:-1]  # in the cache, not yet confirmed
        device = self.prompt.input_ids.device
        tree = DraftTree.from_parents([root, *chain], list(range(-1, n)), device=device)
        self.drafting_s += time.perf_counter() - start
        return tree

    def observe(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Re-synchronize: next_tokens = the accepted drafts, then the target's bonus token.
        Keep the accepted drafts the cache holds, drop the rest, remember the bonus."""
        start = time.perf_counter()
        new = next_tokens.tolist()
        accepted = len(new) - 1
        keep = min(accepted, len(self.speculative))
        assert new[:keep] == self.speculative[:keep], "accepted drafts differ from the chain"
        self.model.truncate(self.prompt_len + self.fed + keep)
        self.text += new
        self.fed += keep
        self.speculative = []
        self.drafting_s += time.perf_counter() - start

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Read `tokens` (causally, one forward) into the cache; the logits after the last."""
        n = len(tokens)
        device = self.prompt.input_ids.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        depths = torch.arange(n, device=device)
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        out = self.model.verify(ids, depths, causal if n > 1 else None)
        self.model.commit(list(range(n)))
        return out.logits[-1]


DRAFTER_FILE = "specvlm_drafter.json"
EVENTS_ACCEPTED = (
    "an .npz file with arrays x, y, t (microseconds), p (+1/-1), a structured array with those "
    "fields, or a dict of them"
)


READS = ("request", "events", "frame", "text")


@dataclass(frozen=True)
class DrafterInput:
    """What a separate draft model reads for a request:
    - "request": the request's own prompt and images (a shallow copy of the target);
    - "events": the request's event stream as an `events_to_tiles` picture (`size` px,
      `n_slices` time slices, a `sensor` = (height, width) camera) where the target reads its
      video, and no other image (the event drafter);
    - "frame": the video's middle frame, as an image, in the video's place (one RGB frame);
    - "text": the question alone, no image or video.
    The event drafter's folder says "events" in its `specvlm_drafter.json` (drafters trained by
    the same recipe on one frame or on the question alone say "frame" / "text"); any model can
    be asked to read one of them by name (`load(assistant_reads=...)`, the bench's `frame` /
    `question` methods)."""

    reads: str = "request"
    size: int = 128
    n_slices: int = 4
    sensor: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        if self.reads not in READS:
            raise InputError(f"a draft model reads one of {', '.join(READS)}; got {self.reads!r}")

    @classmethod
    def of_folder(cls, folder: str | Path) -> DrafterInput:
        """The folder's `specvlm_drafter.json`, or the default when it has none."""
        path = Path(folder) / DRAFTER_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            reads = data["reads"]
            if reads in ("frame", "text"):
                return cls(reads)
            if reads != "events":
                raise ValueError(f"reads {reads!r}")
            return cls(reads, int(data["size"]), int(data["n_slices"]),
                       (int(data["sensor"][0]), int(data["sensor"][1])))  # fmt: skip
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise InputError(
                f"{path} is not a drafter description this version reads ({e}); expected "
                '{"reads": "events", "size": N, "n_slices": N, "sensor": [H, W]}, '
                '{"reads": "frame"} or {"reads": "text"}'
            ) from e

    def prompt(
        self,
        model: Target,
        prompt: str | list[dict[str, Any]],
        images: Any,
        events: Any = None,
        video: Any = None,
    ) -> Prompt:
        """The draft model's prompt for a request (see the class docstring)."""
        if self.reads == "request":
            return model.prepare(prompt, images)
        if self.reads == "text":
            return model.prepare(_without_media(prompt), [])
        if self.reads == "frame":
            if video is None:
                raise InputError("a draft model that reads one frame needs the request's video")
            from specvlm.media import load_video

            middle = load_video(video, 2)[-1]  # frames 0 and total // 2 (one: frame 0)
            return model.prepare(_video_to_image(prompt), [middle])
        if events is None:
            raise InputError(
                "this engine's separate draft model drafts from an event stream: pass "
                f"events=... ({EVENTS_ACCEPTED}), or speculative=False"
            )
        return model.prepare(_video_to_image(prompt), [self.picture(events)])

    def picture(self, events: Any):
        """The request's events drawn as the drafter was trained to read them."""
        from specvlm.world.events import as_events, events_to_tiles, load_events

        try:
            ev = load_events(events) if isinstance(events, str | Path) else as_events(events)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"unreadable events ({e}); accepted: {EVENTS_ACCEPTED}") from e
        h, w = self.sensor
        try:
            return events_to_tiles(ev, h, w, self.size, self.n_slices)
        except ValueError as e:
            raise InputError(f"events do not fit this drafter: {e}") from e


def _without_media(prompt: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The prompt with every image and video placeholder taken out."""
    if isinstance(prompt, str):
        return prompt.replace("<image>", "").replace("<video>", "").lstrip("\n")
    out = []
    for m in prompt:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            text = content.replace("<image>", "").replace("<video>", "").lstrip("\n")
            out.append({**m, "content": text})
        elif isinstance(content, list):
            kept = [
                c
                for c in content
                if not (isinstance(c, dict) and c.get("type") in ("image", "video"))
            ]
            out.append({**m, "content": kept})
        else:
            out.append(m)
    return out


def _video_to_image(prompt: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The request's prompt with its video placeholder as the one image placeholder (images
    of the request dropped); with none, the picture goes before the text, as an image does."""
    if isinstance(prompt, str):
        return prompt.replace("<image>", "").replace("<video>", "<image>", 1).replace("<video>", "")
    out, placed = [], False
    for m in prompt:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            text = content.replace("<image>", "")
            if not placed and "<video>" in text:
                text, placed = text.replace("<video>", "<image>", 1), True
            out.append({**m, "content": text.replace("<video>", "")})
        elif isinstance(content, list):
            parts = []
            for c in content:
                kind = c.get("type") if isinstance(c, dict) else None
                if kind == "video" and not placed:
                    parts.append({"type": "image"})
                    placed = True
                elif kind not in ("video", "image"):
                    parts.append(c)
            out.append({**m, "content": parts})
        else:
            out.append(m)
    if not placed:
        first = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
        if first is not None:
            content = out[first]["content"]
            if isinstance(content, str):
                out[first] = {**out[first], "content": "<image>\n" + content}
            else:
                out[first] = {**out[first], "content": [{"type": "image"}, *content]}
    return out
