"""Every tensor the engine creates follows the device of its inputs.

On a machine without a GPU every tensor is on the CPU anyway, so a mixed-device bug cannot show
as an error here. Instead this test intercepts every tensor factory call (torch.tensor, zeros,
arange, rand, ...) made from the engine's own modules while it decodes, and checks that each one
names its device: a factory without `device=` makes a CPU tensor even when the model is on a GPU.
tests/test_cuda.py runs the same paths on a GPU when there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from specvlm import api
from specvlm.config import SamplingConfig
from specvlm.decoding.sampling import LogitsProcessor, target_probs
from specvlm.decoding.tree import DraftTree, grow_dynamic_tree
from specvlm.decoding.verify import chain_sampled_accept, greedy_accept, sampled_accept
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image

SRC = Path(api.__file__).parent
AUDITED = [
    SRC / "decoding",
    SRC / "draft",
    SRC / "kv_cache.py",
    SRC / "layers.py",
    SRC / "target",
    SRC / "api.py",
]
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.eye,
}


class FactoryAudit(TorchFunctionMode):
    """Records factory calls without an explicit device made directly from audited files."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.undevice: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1)
            path = Path(caller.f_code.co_filename)
            if any(path == a or a in path.parents for a in AUDITED):
                self.calls += 1
                if kwargs.get("device") is None:
                    self.undevice.append(f"{path.name}:{caller.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


def test_tree_verify_and_sampling_name_their_device():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(50, generator=g).log_softmax(-1)

    def expand(tokens, parent_rows):  # (k,) -> (k, V)
        return torch.randn(tokens.shape[0], 50, generator=g).log_softmax(-1)

    with FactoryAudit() as audit:
        tree = grow_dynamic_tree(3, logp, expand, top_k=3, depth=4, budget=8)
        single = DraftTree.single(3, device="cpu")
        logits = torch.randn(tree.size, 50, generator=g)
        greedy_accept(tree, logits)
        greedy_accept(single, logits[:1])
        cfg = SamplingConfig(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.3)
        proc = LogitsProcessor(cfg, torch.tensor([1, 2, 3]), 50)
        proc.observe([4, 5])
        probs = target_probs(proc(logits, tree), cfg)
        sampled_accept(tree, probs, g)
        chain_sampled_accept([1, 2], probs[:2], probs[:3], g)
    assert tree.tokens.device == logp.device and tree.mask.dtype == torch.bool
    assert audit.calls > 0, "the audit saw no factory call: it checks nothing"
    assert audit.undevice == []


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_whole_loop_names_its_devices(tiny_dir, tmp_path, temperature):
    draft = tmp_path / "head"
    fit_head_to_target(tiny_dir, draft, prompts=[("hi", [noise_image(0)])], new_tokens=16, steps=20)
    engine = api.load(target=tiny_dir, draft=draft)
    with FactoryAudit() as audit:
        for spec in (True, False):
            engine.generate(
                "describe it.",
                images=[noise_image(0)],
                max_new_tokens=12,
                temperature=temperature,
                repetition_penalty=1.2,
                seed=0,
                speculative=spec,
            )
    assert audit.calls > 0
    assert audit.undevice == []


def test_the_audit_catches_a_factory_without_device():
    """The check can fail: a CPU-only tensor made in an audited file is reported."""
    code = compile("torch.zeros(3)", str(SRC / "decoding" / "loop.py"), "exec")
    with FactoryAudit() as audit:
        exec(code, {"torch": torch})
    assert audit.undevice == ["loop.py:1 zeros"]
