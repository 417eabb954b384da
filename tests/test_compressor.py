"""The elastic visual compressor: operators, modes, the gate, pairing and positions, the draft
folder, training, the bench, and lossless decoding on the tiny target."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from specvlm import api, embedded
from specvlm.bench import runner
from specvlm.bench.methods import BenchContext, build_methods
from specvlm.cli import main
from specvlm.config import SamplingConfig, TreeConfig
from specvlm.decoding.loop import decode
from specvlm.decoding.stats import SpecStats
from specvlm.draft.compressor import (
    OPERATORS,
    CompressorConfig,
    ElasticCompressor,
    VisualLayout,
    VisualSpan,
    compressor_config,
    grid_pool,
    random_keep,
)
from specvlm.draft.eagle import EagleConfig, EagleDrafter, EagleHead
from specvlm.errors import InputError, ModelFolderError
from specvlm.target import load_target
from specvlm.target.base import Prefill, visual_layout
from specvlm.train.data import Conversation
from specvlm.train.distill import draft_rows, target_item
from specvlm.world.dataset import make_dataset
from tests.conftest import noise_image

D = 16
PROMPT = "describe the image in detail."


def _fixed(op: str, **kw) -> ElasticCompressor:
    return ElasticCompressor(CompressorConfig(mode="fixed", operators=(op,), **kw), D).eval()


def _expected_count(op: str, grid: tuple[int, int, int], cfg: CompressorConfig) -> int:
    t, h, w = grid
    if op in ("prune", "prune_norm"):
        return max(1, round(t * h * w / cfg.ratios[op]))
    if op in ("pool", "conv"):
        s = math.ceil(math.sqrt(cfg.ratios[op]))
        return t * math.ceil(h / s) * math.ceil(w / s)
    return {"resampler": cfg.queries, "text": 0}[op]


# ---- operators -------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(1, 4, 4), (1, 5, 7), (2, 3, 3), (1, 1, 10)])
@pytest.mark.parametrize("op", OPERATORS)
def test_each_operator_has_its_shape_and_is_deterministic(op, grid):
    ratios = {op: 3.0} if op in ("prune", "prune_norm", "pool", "conv") else {}
    torch.manual_seed(0)
    comp = _fixed(op, ratios=ratios, queries=3)
    P = math.prod(grid)
    x, f = torch.randn(P, D), torch.randn(P, D)
    with torch.no_grad():
        tokens, pair = comp.operator(op, x, grid)
        again, pair2 = comp.operator(op, x, grid)
    m = _expected_count(op, grid, comp.config)
    assert tokens.shape == (m, D) and pair(f).shape == (m, D)
    assert torch.equal(tokens, again) and torch.equal(pair(f), pair2(f))


def test_pool_is_the_mean_of_each_window_inside_the_grid():
    x = torch.randn(5 * 7, D)
    out = grid_pool(x, (1, 5, 7), 2)  # windows 2 x 2, the last row and column smaller
    g = x.reshape(5, 7, D)
    want = torch.stack(
        [g[i : i + 2, j : j + 2].reshape(-1, D).mean(0) for i in range(0, 5, 2) for j in range(0, 7, 2)]
    )  # fmt: skip
    torch.testing.assert_close(out, want)
    conv = _fixed("conv", ratios={"conv": 4.0}).conv  # untrained: the window mean
    with torch.no_grad():
        torch.testing.assert_close(conv(x[:16], (1, 4, 4)), grid_pool(x[:16], (1, 4, 4), 2))


def test_random_pruning_is_seeded_and_norm_pruning_keeps_the_largest():
    assert torch.equal(random_keep(16, 5, 0), random_keep(16, 5, 0))
    assert not torch.equal(random_keep(16, 5, 0), random_keep(16, 5, 1))
    x = torch.randn(16, D)
    x[[2, 9, 13]] *= 100
    tokens, pair = _fixed("prune_norm", ratios={"prune_norm": 16 / 3}).operator(
        "prune_norm", x, (1, 4, 4)
    )
    assert torch.equal(tokens, x[[2, 9, 13]]) and torch.equal(pair(x), x[[2, 9, 13]])


def test_the_resampler_pairs_its_tokens_by_its_attention():
    torch.manual_seed(0)
    comp = _fixed("resampler", queries=2)
    with torch.no_grad():
        tokens, pair = comp.operator("resampler", torch.randn(9, D), (1, 3, 3))
    assert tokens.shape == (2, D)
    torch.testing.assert_close(pair(torch.ones(9, 4)), torch.ones(2, 4))  # weights sum to 1


def test_rows_keep_text_and_number_the_compressed_tokens_in_place():
    S = 30
    layout = VisualLayout((VisualSpan(3, 1, 4, 4), VisualSpan(22, 1, 2, 2)))
    e, f = torch.randn(S, D), torch.randn(S, D)
    rows = _fixed("pool", ratios={"pool": 4.0})(e, (f,), layout)
    text = torch.tensor([0, 1, 2, 19, 20, 21, 26, 27, 28, 29])
    assert rows.source.tolist() == [0, 1, 2, -1, -1, -1, -1, 19, 20, 21, -1, 26, 27, 28, 29]
    keep = rows.source >= 0
    assert torch.equal(rows.embeds[keep], e[text]) and torch.equal(rows.features[0][keep], f[text])
    torch.testing.assert_close(rows.features[0][3:7], grid_pool(f[3:19], (1, 4, 4), 2))
    torch.testing.assert_close(rows.features[0][10], f[22:26].mean(0))
    text_only = _fixed("text")(e, (f,), layout)
    assert torch.equal(text_only.source, text) and torch.equal(text_only.embeds, e[text])


def test_visual_layout_from_the_prompt_ids_and_the_adapters_grids():
    ids = torch.tensor([1, 2, *[7] * 16, 3, *[7] * 16, 4])
    layout = visual_layout(ids, 7, [(1, 4, 4)] * 2)
    assert layout.spans == (VisualSpan(2, 1, 4, 4), VisualSpan(19, 1, 4, 4))
    assert layout.n_visual == 32
    assert visual_layout(torch.tensor([1, 7, 7, 7, 2]), 7, [(1, 1, 3)]).spans == (
        VisualSpan(1, 1, 1, 3),
    )
    assert visual_layout(torch.tensor([1, 2]), 7, []).spans == ()
    back_to_back = visual_layout(torch.tensor([1, *[7] * 8, 2]), 7, [(1, 2, 2)] * 2)
    assert back_to_back.spans == (VisualSpan(1, 1, 2, 2), VisualSpan(5, 1, 2, 2))
    with pytest.raises(InputError, match="not contiguous"):
        visual_layout(torch.tensor([7, 7, 1, 7, 7]), 7, [(1, 2, 2)])
    with pytest.raises(InputError, match="4 visual placeholder tokens but its 1 images have 9"):
        visual_layout(torch.tensor([7, 7, 7, 7]), 7, [(1, 3, 3)])
    with pytest.raises(InputError, match="prompt order"):
        VisualLayout((VisualSpan(5, 1, 2, 2), VisualSpan(7, 1, 2, 2)))
    with pytest.raises(InputError, match="grid of >= 1"):
        VisualSpan(0, 1, 0, 4)


# ---- configuration ---------------------------------------------------------------------------
def test_defaults_are_the_papers_and_written_out():
    select = CompressorConfig()
    assert select.mode == "select"
    assert select.operators == ("prune", "pool", "conv", "resampler", "text")
    assert select.ratios == {"prune": 20.0, "pool": 20.0, "conv": 3.0} and select.queries == 2
    assert CompressorConfig(mode="mix").ratios == {"prune": 3.0, "pool": 3.0, "conv": 3.0}
    assert CompressorConfig(mode="mix", ratios={"pool": 4}).ratios == dict.fromkeys(
        ("prune", "pool", "conv"), 4.0
    )
    assert compressor_config("pool", ratios=["pool=4"]) == CompressorConfig(
        mode="fixed", operators=("pool",), ratios={"pool": 4.0}
    )
    assert compressor_config("select", "pool,text").operators == ("pool", "text")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "dynamic"}, r"mode 'dynamic' is unknown; accepted"),
        ({"operators": ("blur", "pool")}, r"unknown compressor operators \['blur'\]; accepted"),
        ({"mode": "fixed", "operators": ("pool", "conv")}, "exactly one operator"),
        ({"mode": "select", "operators": ("pool",)}, ">= 2 operators"),
        ({"mode": "mix", "operators": ("pool", "resampler")}, "one token count"),
        ({"mode": "concat", "operators": ("pool", "text")}, "cannot take 'text'"),
        ({"ratios": {"pool": 0.5}}, "ratio of pool must be a number >= 1"),
        ({"ratios": {"resampler": 2}}, "a ratio applies to"),
        ({"mode": "mix", "ratios": {"prune": 2, "pool": 3}}, "ONE ratio"),
        ({"queries": 0}, "queries must be an integer >= 1"),
        ({"gumbel_tau": 0}, "gumbel_tau must be a number > 0"),
    ],
)
def test_bad_settings_say_what_is_accepted(kwargs, message):
    with pytest.raises(InputError, match=message):
        CompressorConfig(**kwargs)


def test_bad_command_line_values_say_what_is_accepted():
    with pytest.raises(InputError, match="give a mode"):
        compressor_config("blur")
    with pytest.raises(InputError, match="OPERATOR=RATIO"):
        compressor_config("pool", ratios=["pool:4"])
    with pytest.raises(InputError, match=r"unknown compressor keys \['size'\]"):
        CompressorConfig.from_dict({"size": 3})


# ---- the gate --------------------------------------------------------------------------------
def _select(**kw) -> ElasticCompressor:
    torch.manual_seed(0)
    return ElasticCompressor(CompressorConfig(**kw), D).eval()


def test_the_gate_argmax_picks_one_operator_per_input_from_the_question():
    comp = _select()
    ops = comp.config.operators
    with torch.no_grad():  # feature direction i -> operator i
        comp.gate.weight.copy_(torch.eye(len(ops), D) * 10)
    layout = VisualLayout((VisualSpan(1, 1, 4, 4),))
    e, f = torch.randn(20, D), torch.randn(20, D)
    for k, op in enumerate(ops):
        question = torch.eye(D)[k]
        with torch.no_grad():
            rows = comp(e, (f,), layout, gate_feature=question)
            tokens, pair = comp.operator(op, e[1:17], (1, 4, 4))
        assert rows.choice == op
        m = tokens.shape[0]
        assert rows.embeds.shape[0] == 20 - 16 + m
        assert torch.equal(rows.embeds[1 : 1 + m], tokens)
        assert torch.equal(rows.features[0][1 : 1 + m], pair(f[1:17]))


def test_gumbel_in_training_picks_one_and_the_gate_learns_through_it():
    comp = _select().train()
    layout = VisualLayout((VisualSpan(1, 1, 4, 4),))
    e, f = torch.randn(20, D), torch.randn(20, D)
    gumbel = torch.tensor([0.0, 5.0, 0.0, 0.0, 0.0])  # the noise decides: pool
    rows = comp(e, (f,), layout, gate_feature=torch.randn(D), gumbel=gumbel)
    assert rows.choice == "pool"
    torch.testing.assert_close(rows.embeds[1:2], grid_pool(e[1:17], (1, 4, 4), 5))  # 1 x 1
    (rows.embeds.sum() + rows.features[0].sum()).backward()
    assert comp.gate.bias.grad is not None and comp.gate.bias.grad.abs().sum() > 0


def test_mix_blends_prune_pool_conv_at_one_ratio_by_the_gate():
    comp = _select(mode="mix")
    with torch.no_grad():
        comp.gate.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    x, f = torch.randn(16, D), torch.randn(16, D)
    with torch.no_grad():
        rows = comp(x, (f,), VisualLayout((VisualSpan(0, 1, 4, 4),)), gate_feature=torch.zeros(D))
        parts = [comp.operator(op, x, (1, 4, 4), 4) for op in ("prune", "pool", "conv")]
    assert rows.choice == "conv" and rows.embeds.shape == (4, D)
    torch.testing.assert_close(
        rows.embeds, sum(wi * t for wi, (t, _) in zip(w, parts, strict=True))
    )
    torch.testing.assert_close(
        rows.features[0], sum(wi * p(f) for wi, (_, p) in zip(w, parts, strict=True))
    )


# ---- the draft -------------------------------------------------------------------------------
def _head(compressor: CompressorConfig | None) -> EagleHead:
    torch.manual_seed(0)
    config = EagleConfig(
        hidden_size=D, vocab_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
        intermediate_size=32, compressor=compressor,
    )  # fmt: skip
    return EagleHead(config).eval()


def test_a_text_only_draft_never_reads_visual_tokens():
    head = _head(CompressorConfig(mode="fixed", operators=("text",)))
    table = torch.randn(64, D)
    layout = VisualLayout((VisualSpan(2, 1, 4, 4),))
    features, embeds = torch.randn(22, D), table[torch.arange(22)].clone()
    results = []
    for fill in (torch.randn(16, D), torch.full((16, D), float("nan"))):  # NaN: if read, seen
        f, e = features.clone(), embeds.clone()
        f[2:18], e[2:18] = fill, fill
        drafter = EagleDrafter(head, lambda ids: table[ids], lambda x: x @ table.T)
        prefill = Prefill(logits=torch.zeros(64), features=f, embeds=e, visual=layout)
        drafter.begin(prefill, root=3, capacity=40)
        assert drafter.cache.length == 22 - 16 and drafter.hidden == 16
        assert drafter.cache.capacity == 40 - 16
        results.append(drafter.root_logprobs)
    assert torch.isfinite(results[1]).all() and torch.equal(results[0], results[1])


def test_a_draft_with_a_compressor_saves_and_loads_with_its_typed_config(tmp_path):
    head = _head(CompressorConfig(ratios={"conv": 4.0}))
    with torch.no_grad():
        head.compressor.gate.bias.copy_(torch.arange(5.0))
    head.save(tmp_path / "d", dtype=torch.float32)
    data = json.loads((tmp_path / "d" / "config.json").read_text())
    assert data["compressor"] == {
        "mode": "select", "operators": ["prune", "pool", "conv", "resampler", "text"],
        "ratios": {"prune": 20.0, "pool": 20.0, "conv": 4.0}, "queries": 2, "seed": 0,
        "gumbel_tau": 1.0,
    }  # fmt: skip
    loaded = EagleHead.load(tmp_path / "d")
    assert loaded.config == head.config
    state = loaded.state_dict()
    assert any(k.startswith("compressor.conv.") for k in state)
    assert all(torch.equal(v, state[k]) for k, v in head.state_dict().items())
    data["compressor"]["operators"] = ["pool", "blur"]
    (tmp_path / "d" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=r"config.json: compressor: unknown compressor op"):
        EagleHead.load(tmp_path / "d")


def test_draft_folders_from_before_the_compressor_still_load(tmp_path):
    _head(None).save(tmp_path / "plain")
    assert "compressor" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    assert EagleHead.load(tmp_path / "plain").compressor is None
    before = embedded.embedded_eaglevlm_draft()  # the EagleVLM head, shipped before it
    if before is None:
        pytest.skip("the embedded drafts are not in this checkout")
    assert "compressor" not in json.loads((Path(before) / "config.json").read_text())
    assert EagleHead.load(before).compressor is None
    # the default draft of the embedded target is the compressor draft (select mode)
    default = EagleHead.load(embedded.embedded_draft())
    assert default.compressor is not None and default.config.compressor.mode == "select"


# ---- on the tiny target ----------------------------------------------------------------------
class InvariantCheck:
    """A drafter that checks the loop's invariant after every catch-up: the target's cache is
    exactly Δ positions ahead of the draft's, Δ fixed at the draft's prefill."""

    def __init__(self, inner: EagleDrafter, target) -> None:
        self.inner, self.target, self.gaps = inner, target, []

    def begin(self, prefill, root, capacity):
        self.inner.begin(prefill, root, capacity)
        self.gaps.append(self.target.length - self.inner.cache.length)

    def propose(self, *args, **kwargs):
        return self.inner.propose(*args, **kwargs)

    def observe(self, features, next_tokens):
        self.inner.observe(features, next_tokens)
        self.gaps.append(self.target.length - self.inner.cache.length)


CONFIGS = [CompressorConfig(mode="fixed", operators=(op,)) for op in OPERATORS] + [
    CompressorConfig(ratios={"pool": 4.0}),  # select; untrained gate: argmax = prune
    CompressorConfig(mode="mix"),
    CompressorConfig(mode="concat", ratios={"pool": 4.0, "conv": 4.0}),
]


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_target(tiny_dir)


def test_greedy_output_is_the_targets_for_every_operator_and_mode(target):
    prompt = target.prepare(PROMPT, [noise_image(2)])
    plain = api.Engine(target, None).generate(
        PROMPT, [noise_image(2)], max_new_tokens=32, speculative=False
    )
    layout = target.prefill(prompt, capacity=prompt.input_ids.shape[0]).visual
    assert layout.spans[0].grid == (1, 4, 4)  # set by the adapter: a 4 x 4 grid
    P = layout.n_visual
    for cc in CONFIGS:
        torch.manual_seed(0)
        head = EagleHead(EagleConfig.for_target(target.info, num_attention_heads=2, compressor=cc))
        head.eval()
        drafter = InvariantCheck(EagleDrafter(head, target.embed, target.lm_head), target)
        ids = [
            t
            for new in decode(
                target,
                prompt,
                drafter=drafter,
                max_new_tokens=32,
                sampling=SamplingConfig(),
                tree=TreeConfig(),
                stats=SpecStats(),
            )  # fmt: skip
            for t in new
        ]
        assert ids == plain.token_ids, cc
        hidden = drafter.inner.hidden
        assert len(drafter.gaps) > 1 and set(drafter.gaps) == {hidden}, (cc, drafter.gaps)
        assert (hidden == P) == (cc.operators == ("text",)) and 0 < hidden <= P, cc


def test_training_and_decoding_build_the_same_draft_rows(target, tmp_path):
    noise_image(4).save(tmp_path / "a.png")
    conv = Conversation("x", [("user", f"<image>\n{PROMPT}"), ("assistant", "a red circle.")],
                        [tmp_path / "a.png"])  # fmt: skip
    head = EagleHead(EagleConfig.for_target(target.info, compressor=CompressorConfig())).eval()
    with torch.no_grad():  # a gate that reads the question: its choice depends on the feature
        head.compressor.gate.weight.normal_(0, 1)
    features, embeds, mask, layout = target_item(target, conv)
    with torch.no_grad():
        f, e, m, choice = draft_rows(head, features, embeds, mask, layout)
    assert int(m.sum()) == int(mask.sum())  # every answer row is kept
    text = target.render_chat(conv.messages()[:1], add_generation_prompt=True)
    prompt = target.tokenize(text, conv.images)
    prefill = target.prefill(prompt, capacity=prompt.input_ids.shape[0])
    drafter = EagleDrafter(head, target.embed, target.lm_head)
    pf, pe = drafter.prompt_rows(prefill)
    assert drafter.choice == choice
    T = pf.shape[0]
    torch.testing.assert_close(pf, f[:T], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pe, e[:T], atol=1e-5, rtol=1e-5)
    assert not m[:T].any() and m[T:].any()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    return make_dataset(
        "train", 2, out, families=["conversation", "reasoning"], resolution=64, progress=False
    )


def test_train_draft_trains_the_compressor_and_logs_the_gate_per_family(
    tiny_dir, target, data, tmp_path
):
    out = tmp_path / "d"
    args = ["train-draft", "--target", str(tiny_dir), "--data", str(data), "--out", str(out)]
    rc = main([*args, "--batch-size", "2", "--epochs", "2", "--compressor", "select",
               "--compressor-ratio", "pool=4", "--no-progress"])  # fmt: skip
    assert rc == 0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4
    chosen = {fam for r in log for fam in r["gate"]}
    assert chosen == {"conversation", "reasoning"}
    assert sum(n for r in log for c in r["gate"].values() for n in c.values()) == 8
    head = EagleHead.load(out)
    assert head.config.compressor == CompressorConfig(ratios={"pool": 4.0})
    engine = api.Engine(target, head)
    spec = engine.generate(PROMPT, [noise_image(1)], max_new_tokens=24)
    plain = engine.generate(PROMPT, [noise_image(1)], max_new_tokens=24, speculative=False)
    assert spec.token_ids == plain.token_ids
    # the compressor is a setting of the run: resuming with another is refused
    assert main([*args, "--batch-size", "2", "--epochs", "2", "--compressor", "pool",
                 "--resume", "--no-progress"]) == 2  # fmt: skip
    assert main([*args, "--compressor-ratio", "pool=4"]) == 2  # without --compressor


def test_bench_reports_the_drafts_prefill_and_kv_cache(target, tmp_path):
    img = tmp_path / "i.png"
    noise_image(0).save(img)
    torch.manual_seed(0)
    plain_head = EagleHead(EagleConfig.for_target(target.info)).eval()
    pooled = EagleHead(
        EagleConfig.for_target(
            target.info,
            compressor=CompressorConfig(mode="fixed", operators=("pool",), ratios={"pool": 4}),
        )
    ).eval()
    pooled.save(tmp_path / "c")
    engine = api.Engine(target, plain_head)
    ctx = BenchContext(engine=engine, compressor_draft=tmp_path / "c")
    methods = build_methods(["eaglevlm", "specvlm"], ctx)

    class Item:
        id, suite, messages, images = "a", "s", ({"role": "user", "content": "<image>\nq"},), (img,)

    records = runner.run_bench(methods, [Item()], max_new_tokens=16, progress=False)
    rec = {r["method"]: r for r in records}
    assert all(rec[m]["identical"] for m in rec)
    assert "draft_kv_tokens" not in rec["plain"]
    eagle, spec = rec["eaglevlm"], rec["specvlm"]
    assert eagle["draft_kv_tokens"] - spec["draft_kv_tokens"] == 16 - 4  # 4 x 4 -> 2 x 2
    per_token = eagle["draft_kv_bytes"] / eagle["draft_kv_tokens"]
    assert spec["draft_kv_bytes"] == per_token * spec["draft_kv_tokens"]
    assert spec["draft_prefill_ms"] > 0
    rows = {r["method"]: r for r in runner.summarise(records) if r["suite"] == "all"}
    assert rows["specvlm"]["draft_kv_tokens"] == spec["draft_kv_tokens"]
    with pytest.raises(InputError, match="bench only method 'specvlm'"):
        build_methods(["eaglevlm"], BenchContext(engine=api.Engine(target, pooled)))
    with pytest.raises(InputError, match="needs a draft head with an elastic visual compressor"):
        build_methods(["specvlm"], BenchContext(engine=engine))


# ---- where the images are: the target's Prefill, the same for every caller ------------------
class Recorder:
    """A drafter that keeps what `begin` was given and proposes the root alone."""

    def __init__(self) -> None:
        self.prefills: list[Prefill] = []

    def begin(self, prefill, root, capacity):
        self.prefills.append(prefill)

    def propose(self, root, depth, top_k, budget):
        from specvlm.decoding.tree import DraftTree

        return DraftTree.single(root)

    def observe(self, features, next_tokens):
        pass


def test_the_loop_hands_the_drafter_the_targets_own_prefill_spans():
    from tests.stubs import IMAGE, StubTarget

    target = StubTarget(image_grid=(1, 2, 3))
    prompt = target.prepare("abc", [object(), object()])
    assert prompt.input_ids.tolist().count(IMAGE) == 12
    drafter = Recorder()
    for _ in decode(target, prompt, drafter=drafter, max_new_tokens=4, sampling=SamplingConfig(),
                    tree=TreeConfig(), stats=SpecStats()):  # fmt: skip
        pass
    (seen,) = drafter.prefills
    assert type(seen) is Prefill  # the target's own, not a wrapper
    assert seen.visual.spans == (VisualSpan(1, 1, 2, 3), VisualSpan(7, 1, 2, 3))
    text_only = target.prefill(target.prepare("abc", []), capacity=8)
    assert text_only.visual.spans == ()


def test_tuning_drafts_read_the_images_as_decoding_does(target, monkeypatch):
    from specvlm.bench import tune

    seen = []
    rows = EagleDrafter.prompt_rows

    def spy(self, prefill):
        out = rows(self, prefill)
        seen.append((prefill.visual.n_visual, out[0].shape[0]))  # (target, draft) rows
        return out

    monkeypatch.setattr(EagleDrafter, "prompt_rows", spy)
    head = _tiny_head(target, CompressorConfig(mode="fixed", operators=("text",)))
    engine = api.Engine(target, head)
    monkeypatch.setattr(tune, "GRID", {"depth": (2,), "top_k": (1,), "budget": (2,)})
    tune.measure_costs(engine, (PROMPT, [noise_image(0)]), repeats=1)
    prompt = target.prepare(PROMPT, [noise_image(0)])
    T = prompt.input_ids.shape[0]
    assert seen == [(16, T - 16)]  # the image's 16 tokens, and the draft read none of them


def _tiny_head(target, compressor: CompressorConfig | None) -> EagleHead:
    torch.manual_seed(0)
    config = EagleConfig.for_target(target.info, num_attention_heads=2, compressor=compressor)
    return EagleHead(config).eval()


# ---- forced settings (ablations) -------------------------------------------------------------
def test_a_forced_setting_shares_the_trained_modules_and_refuses_what_was_not_trained():
    comp = _select(ratios={"conv": 4.0}, queries=3)
    pool9 = comp.override(CompressorConfig(mode="fixed", operators=("pool",), ratios={"pool": 9}))
    assert list(pool9.parameters()) == [] and not pool9.training
    conv = comp.override(CompressorConfig(mode="fixed", operators=("conv",), ratios={"conv": 3}))
    assert conv.conv is comp.conv  # a 2 x 2 window, as trained (ceil(sqrt(3)) = 2)
    concat = comp.override(
        CompressorConfig(mode="concat", operators=("prune", "pool", "conv", "resampler"),
                         ratios={"conv": 4.0}, queries=3)
    )  # fmt: skip
    assert concat.resampler is comp.resampler and concat.conv is comp.conv
    assert comp.override(comp.config).gate is comp.gate
    x, f = torch.randn(20, D), torch.randn(20, D)
    layout = VisualLayout((VisualSpan(2, 1, 4, 4),))
    with torch.no_grad():
        rows = conv(x, (f,), layout)
        tokens, _ = comp.operator("conv", x[2:18], (1, 4, 4))
    assert torch.equal(rows.embeds[2:6], tokens) and rows.choice is None
    bad = [
        (CompressorConfig(mode="fixed", operators=("conv",), ratios={"conv": 9}), "3 x 3|2 x 2"),
        (CompressorConfig(mode="fixed", operators=("resampler",), queries=2), "3 queries"),
        (CompressorConfig(mode="select", operators=("pool", "text")), "the gate was trained"),
    ]
    for cfg, message in bad:
        with pytest.raises(InputError, match=message):
            comp.override(cfg)
    no_conv = _fixed("pool")
    with pytest.raises(InputError, match="conv is not among"):
        no_conv.override(CompressorConfig(mode="fixed", operators=("conv",)))
