"""The CPU weight layout the engine runs with: same values, transposed storage, tied rows kept."""

from __future__ import annotations

import torch
from torch import nn

from specvlm.layers import fast_linear_layout


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5, bias=False)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # a tied LM head


def test_fast_layout_keeps_values_and_transposes_storage():
    torch.manual_seed(0)
    m = Tied()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 6)
    y = m.proj(x)
    assert fast_linear_layout(m) == 1  # proj only: the head shares the embedding table
    assert m.proj.weight.shape == (5, 6) and m.proj.weight.stride() == (1, 5)
    assert m.head.weight.stride() == (6, 1) and m.embed.weight.is_contiguous()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(m.proj(x), y, rtol=1e-6, atol=1e-6)
    assert fast_linear_layout(m) == 0  # idempotent


def test_target_loads_with_the_fast_layout_and_tied_head_kept(tiny_dirs):
    from specvlm.target import load_target

    for name, tied in (("llama-mha-untied-vfl1-32px", False), ("llama-gqa-tied-vfl2-48px", True)):
        target = load_target(tiny_dirs[name])
        q = target.model.model.language_model.layers[0].self_attn.q_proj.weight
        assert q.stride() == (1, q.shape[0]), name  # loaded on the CPU: fast layout
        head = target.model.lm_head.weight
        assert head.is_contiguous() == tied, name  # a tied head keeps the table's row layout
