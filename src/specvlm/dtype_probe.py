"""Which dtype decodes faster on this CPU, bfloat16 or float32, and which kernel multiplies one
row: measured once, remembered.

    from specvlm.dtype_probe import cpu_decoding_dtype
    cpu_decoding_dtype()             # torch.float32 or torch.bfloat16 (cached per machine)

`dtype="auto"` asks this on a CPU with native bf16 (AVX-512 BF16 or AMX). The capability alone
does not decide the speed: on a 2-core AMD Zen 5 box the world-smol pair decoded faster in
bfloat16 (2.59x over plain), on a 2-core Emerald Rapids Xeon (avx512_bf16, no AMX exposed) plain
decoding ran at the same speed in both and tree verification and prefill were dearer in
bfloat16 (docs/benchmarks.md, "The shipped pair: v9"). So a probe times what a decoding step
spends most of its time on, the linears of the decoder layers, in both dtypes and with the
kernels the engine uses for each (`layers.PackedLinear` for float32 where it packs, else
PyTorch's matmul on the transposed layout; PyTorch's matmul for bfloat16): one row (a plain
step) and 16 rows (a tree), through layers of width 1024 and MLP 2816 (51 MB of float32 weights
each), as many distinct layers as make 1.5 times the CPU's last-level cache (at most
`MAX_LAYERS`), so that the weights are read from memory, as a real target's are. The two
dtypes take turns, pass by pass, and each keeps its fastest pass (other work on a shared
machine only ever adds time). bfloat16 is chosen only where it takes at most `MARGIN` of
float32's time: float32's speculative output is the plain path's bit for bit in the linears
(with `SPECVLM_CPU_LINEAR=onednn`; on the default one-row policy up to rounding, as in
attention) and has been identical in every benchmark, where bfloat16's differs on near-ties.

The times are kept in `$SPECVLM_CACHE/dtype-probe/<key>.json` (default under ~/.cache/specvlm),
the key a hash of the CPU's model name, its architecture, torch's version, the thread count and
the float32 kernel setting (`SPECVLM_CPU_LINEAR`; the one-row choices it leads to are the
second probe's, below), and of `PROBE_VERSION`; the choice is made from the
times when read, so the probe (a few seconds, ~1 GB of memory for a moment) runs once per
machine. Delete the file to measure again. The thread count is the one when the probe runs: an
engine loaded before `torch.set_num_threads` changes it keeps its dtype.

The second probe here, `one_row_kernel(out, in)`, says how a `PackedLinear` of that weight shape
computes a single row (a plain decoding step): by oneDNN's packed copy, as in a tree, or by
PyTorch's matmul on the transposed dense weight, where that takes at most `ONE_ROW_MARGIN` of
oneDNN's time (on a 2-core Emerald Rapids Xeon about half, for every decoder shape of
SmolLM2-135M; on a 2-core Zen 3 EPYC the two were close, oneDNN ahead for the larger shapes).
Each shape (and layout: a tied LM head keeps its rows) is timed once per machine, milliseconds
for a decoder layer's weights (the weight repeated, so in cache where it fits), and kept in
`$SPECVLM_CACHE/linear-probe/<key>.json`, so a model loads with the same kernels every time on
one machine (delete the file to measure again). On a loaded machine the times are scheduling
noise (a 2-core box training at the same time: ~4 ms for every product, oneDNN's slightly
less), and the margin then keeps oneDNN.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

from specvlm.layers import PackedLinear, cpu_linear_choice, wants_packed_linear
from specvlm.layers import one_row_kernel as engine_one_row_kernel

PROBE_VERSION = 1  # bump when what is timed changes: older records are then measured again
MARGIN = 0.9  # bfloat16 must take at most this share of float32's time
ONE_ROW_VERSION = 1  # the one-row kernel probe's PROBE_VERSION
ONE_ROW_MARGIN = 0.9  # one row on PyTorch's matmul must take at most this share of oneDNN's
WIDTH, MLP = 1024, 2816
ROWS = (1, 16)  # a plain step, a tree of 16 tokens
MAX_LAYERS = 10
REPEATS = 8
_lock = threading.Lock()
_one_row_lock = threading.Lock()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """The largest CPU cache's size (Linux sysfs: "266240K"), else 32 MiB."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            best = max(best, int(text.rstrip("KMG")) * units.get(text[-1], 1))
        except (OSError, ValueError, IndexError):
            continue
    return best or 32 << 20


def probe_path(cache: str | Path | None = None) -> Path:
    from specvlm.smol import cache_root

    kernel = "matmul"
    if wants_packed_linear("cpu", torch.float32):
        kernel = f"packed, one row {cpu_linear_choice()}"  # auto: per shape, `one_row_kernel`
    what = f"v{PROBE_VERSION}|{_machine()}|float32 {kernel}"
    name = hashlib.sha256(what.encode()).hexdigest()[:16]
    return cache_root(cache) / "dtype-probe" / f"{name}.json"


def _about() -> dict:
    """The machine a probe's record was measured on (its CPU, torch, threads), for the reader."""
    return {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def _machine() -> str:
    """What a probe's times depend on besides what it times: CPU, torch, threads."""
    return (
        f"{cpu_model()}|{platform.machine()}|torch {torch.__version__}"
        f"|{torch.get_num_threads()} threads"
    )


# (out, in) of a layer's four matmuls: fused q/k/v, o, fused gate/up, down
SHAPES = ((3 * WIDTH, WIDTH), (WIDTH, WIDTH), (2 * MLP, WIDTH), (WIDTH, MLP))


def n_layers() -> int:
    """How many distinct layers the probe cycles through: 1.5x the last-level cache in float32."""
    layer = 4 * sum(o * i for o, i in SHAPES)
    return max(2, min(MAX_LAYERS, math.ceil(1.5 * last_level_cache_bytes() / layer)))


def _layers(dtype: torch.dtype, n: int, cache: str | Path | None = None) -> list[list]:
    """n layers' four matmuls (fused q/k/v, o, fused gate/up, down) as callables on (M, in)
    inputs, with the kernels the engine picks for `dtype`."""
    g = torch.Generator().manual_seed(0)
    packed = wants_packed_linear("cpu", dtype)
    layers = []
    for _ in range(n):
        fns = []
        for o, i in SHAPES:
            w = (torch.rand(o, i, generator=g) * 2 - 1).mul_(i**-0.5).to(dtype)  # (out, in)
            if packed:  # the dense weight (read for one row where that is faster): fast layout
                w = w.t().contiguous().t()
                fns.append(PackedLinear(w, None, engine_one_row_kernel(w, cache)))
            else:
                if dtype == torch.float32:  # the engine's fast layout: W^T contiguous
                    w = w.t().contiguous().t()
                fns.append(functools.partial(torch.nn.functional.linear, weight=w))
        layers.append(fns)
    return layers


def _pass(layers: list[list], inputs: dict[int, torch.Tensor]) -> float:
    """Seconds of one pass through every layer's matmuls."""
    t0 = time.perf_counter()
    for fns in layers:
        for f, (_, i) in zip(fns, SHAPES, strict=True):
            f(inputs[i])
    return time.perf_counter() - t0


def measure(repeats: int = REPEATS, cache: str | Path | None = None) -> dict:
    """Seconds per layer, per dtype and row count: the fastest of `repeats` passes after one
    warm-up pass, the dtypes taking turns."""
    n = n_layers()
    dtypes = (torch.float32, torch.bfloat16)
    layers = {d: _layers(d, n, cache) for d in dtypes}
    g = torch.Generator().manual_seed(1)
    best: dict[tuple, float] = {}
    with torch.inference_mode():
        for rows in ROWS:
            inputs = {i: torch.randn(rows, i, generator=g) for _, i in SHAPES}
            typed = {d: {i: x.to(d) for i, x in inputs.items()} for d in dtypes}
            for k in range(repeats + 1):
                for d in dtypes:
                    t = _pass(layers[d], typed[d]) / n
                    if k > 0:
                        best[d, rows] = min(best.get((d, rows), float("inf")), t)
    return {
        "seconds_per_layer": {
            str(d).removeprefix("torch."): {str(r): best[d, r] for r in ROWS} for d in dtypes
        },
        "layers": n,
        **_about(),
        "version": PROBE_VERSION,
    }


def choose(record: dict) -> str:
    """ "bfloat16" where its times (summed over the row counts) are at most MARGIN of float32's."""
    total = {d: sum(t.values()) for d, t in record["seconds_per_layer"].items()}
    return "bfloat16" if total["bfloat16"] <= MARGIN * total["float32"] else "float32"


def _write(path: Path, record: dict) -> None:
    """`record` as JSON at `path`, atomically; a read-only cache is left as it is (the times
    then hold for this process only)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


@functools.cache
def _record(path: Path, cache: str | Path | None = None) -> dict:
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            choose(record)
            return record
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: measure again and overwrite it
    print("specvlm: timing float32 and bfloat16 on this CPU once (dtype='auto')", file=sys.stderr)
    record = measure(cache=cache)
    _write(path, record)
    return record


def cpu_decoding_record(cache: str | Path | None = None) -> dict:
    """The probe's record (seconds per layer, per dtype and row count), with "dtype": the
    choice its times make and "bf16_share": bfloat16's time over float32's."""
    with _lock:  # one measurement per process, whichever thread asks first
        record = dict(_record(probe_path(cache), cache))
    total = {d: sum(t.values()) for d, t in record["seconds_per_layer"].items()}
    return record | {"dtype": choose(record), "bf16_share": total["bfloat16"] / total["float32"]}


def cpu_decoding_dtype(cache: str | Path | None = None) -> torch.dtype:
    """bfloat16 if it runs decoding's linears at least 10% faster than float32 on this CPU
    (measured once per machine, then read from the cache), else float32."""
    dtype = cpu_decoding_record(cache)["dtype"]
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


# ---------------------------------------------------------------------------------------------
# one row: oneDNN's packed weight or PyTorch's matmul on the transposed layout, per weight shape
# ---------------------------------------------------------------------------------------------

ONE_ROW_REPEATS = 40


def one_row_path(cache: str | Path | None = None) -> Path:
    from specvlm.smol import cache_root

    name = hashlib.sha256(f"one-row v{ONE_ROW_VERSION}|{_machine()}".encode()).hexdigest()[:16]
    return cache_root(cache) / "linear-probe" / f"{name}.json"


def measure_one_row(
    out_features: int,
    in_features: int,
    repeats: int = ONE_ROW_REPEATS,
    transposed: bool = True,
) -> dict:
    """Seconds for one row times a float32 (out, in) weight by oneDNN's packed copy ("packed",
    as `PackedLinear` computes it) and by `F.linear` on the dense weight ("dense"; stored
    transposed, the engine's fast layout, or row by row as a tied LM head keeps it): the
    fastest of `repeats` products after three warm-up ones, the kernels taking turns. The
    weight is the same each time, so it is read from cache where it fits: a plain step reads
    each layer's weights once, from memory for a large model, which narrows the gap between
    the kernels (the margin keeps oneDNN where they are close)."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(out_features, in_features, generator=g).sub_(0.5).mul_(in_features**-0.5)
    if transposed:
        w = w.t().contiguous().t()  # (out, in), strides (1, out)
    lin = PackedLinear(w, None)
    x = torch.randn(1, in_features, generator=g)
    dense = functools.partial(torch.nn.functional.linear, weight=lin.dense)
    kernels = {"packed": lin, "dense": dense}
    best = dict.fromkeys(kernels, float("inf"))
    with torch.inference_mode():
        for k in range(repeats + 3):
            for name, f in kernels.items():
                t0 = time.perf_counter()
                f(x)
                if k >= 3:
                    best[name] = min(best[name], time.perf_counter() - t0)
    return best


def choose_one_row(times: dict) -> str:
    """ "dense" where PyTorch's matmul takes at most ONE_ROW_MARGIN of oneDNN's time for one row,
    else "packed" (which also keeps each row's result the same bits alone and in a tree)."""
    return "dense" if times["dense"] <= ONE_ROW_MARGIN * times["packed"] else "packed"


def one_row_record(cache: str | Path | None = None) -> dict:
    """The one-row probe's record so far: {"shapes": {"OUTxIN": {"packed": s, "dense": s}}, ...}
    ({} when nothing has been measured on this machine yet)."""
    path = one_row_path(cache)
    try:
        record = json.loads(path.read_text())
        for times in record["shapes"].values():
            choose_one_row(times)
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def one_row_kernel(
    out_features: int,
    in_features: int,
    cache: str | Path | None = None,
    transposed: bool = True,
) -> str:
    """ "dense" if PyTorch's matmul computes one row times an (out, in) float32 weight (in the
    transposed layout or, `transposed=False`, row by row) at least 10% faster than oneDNN's
    packed copy on this CPU, else "packed". Each shape and layout is timed once per machine
    (milliseconds; a 49,152 x 576 LM head ~0.5 s and ~0.3 GB for a moment) and kept in
    `one_row_path`, so a model loads with the same kernels every time on one machine."""
    key = f"{out_features}x{in_features}{'' if transposed else ' rows'}"
    with _one_row_lock:
        path = one_row_path(cache)
        if (path, key) not in _one_row_memo:
            times = one_row_record(cache).get("shapes", {}).get(key)
            if times is None:
                times = measure_one_row(out_features, in_features, transposed=transposed)
                # what another process wrote meanwhile is kept, and its times win for a shape
                # both measured, so that every process chooses alike
                shapes = one_row_record(cache).get("shapes", {})
                times = shapes.setdefault(key, times)
                _write(path, {**_about(), "version": ONE_ROW_VERSION, "shapes": shapes})
            _one_row_memo[path, key] = choose_one_row(times)
        return _one_row_memo[path, key]


_one_row_memo: dict[tuple[Path, str], str] = {}
