"""Bad input to the Python API: one clear InputError each, never a traceback from a library."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

import specvlm
from specvlm import api
from specvlm.media import MAX_PIXELS, load_image
from specvlm.train.quickfit import fit_head_to_target
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def draft(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("draft") / "head"
    fit_head_to_target(tiny_dir, folder, prompts=[("hi", [noise_image(0)])], new_tokens=8, steps=5)
    return folder


def test_public_names():
    for name in (
        "load",
        "Engine",
        "GenerationOutput",
        "GenerationRequest",
        "StreamPiece",
        "TreeConfig",
        "SamplingConfig",
        "SpecStats",
        "InputError",
        "EngineBusyError",
    ):
        assert getattr(specvlm, name) is not None and name in specvlm.__all__
    assert specvlm.load is api.load and specvlm.Engine is api.Engine
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        specvlm.nope  # noqa: B018


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_images_from_bytes_and_file_objects_equal_the_path(tmp_path):
    img = noise_image(1)
    path = tmp_path / "a.png"
    img.save(path)
    want = load_image(path).tobytes()
    assert load_image(png_bytes(img)).tobytes() == want
    with open(path, "rb") as f:
        assert load_image(f).tobytes() == want


@pytest.mark.parametrize(
    "item, message",
    [
        (3, "type int"),
        ({"url": "x"}, "type dict"),
        ("http://example.com/cat.png", "URL.*never fetches"),
        ("https://example.com/cat.png", "URL"),
        (b"not an image", "cannot read the 12 bytes"),
        ("no/such/file.png", "not found"),
    ],
)
def test_bad_images_say_what_is_accepted(item, message):
    with pytest.raises(specvlm.ImageError, match=message):
        load_image(item)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "red")  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    data = png_bytes(img, "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 40)  # read from a file: upright, as a camera meant it
    # a PIL image is taken as given, as transformers' processors take it
    assert load_image(Image.open(io.BytesIO(data))).size == (40, 20)


def test_a_decompression_bomb_is_refused_with_the_limit(tmp_path):
    side = 20000
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)  # a few KB on disk, 400 megapixels decoded
    with pytest.raises(specvlm.ImageError, match=f"{MAX_PIXELS:,}"):
        load_image(path)


def test_a_message_without_content(tiny_dir):
    engine = api.load(target=tiny_dir)
    with pytest.raises(specvlm.PromptError, match="message 0 has content None"):
        engine.generate([{"role": "user"}], max_new_tokens=2)
    with pytest.raises(specvlm.PromptError, match="content"):
        engine.generate([{"role": "user", "content": 5}], max_new_tokens=2)


def test_devices_and_dtypes(tiny_dir):
    with pytest.raises(specvlm.InputError, match="unknown device 'banana'"):
        api.load(target=tiny_dir, device="banana")
    with pytest.raises(specvlm.InputError, match="unknown dtype"):
        api.load(target=tiny_dir, dtype="float8")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(specvlm.InputError, match="CUDA is not available"):
            api.load(target=tiny_dir, device="cuda")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("hidden_size"), r"missing keys \['hidden_size'\]"),
        (lambda c: c.update(hidden_size="wide"), "hidden_size must be an integer"),
        (lambda c: c.update(rms_norm_eps=None), "rms_norm_eps must be a number"),
        (lambda c: c.update(target=[]), "target must be an object"),
        (lambda c: c.update(colour=1), "unknown keys"),
    ],
)
def test_bad_draft_config(tiny_dir, draft, tmp_path, edit, message):
    folder = tmp_path / "d"
    shutil.copytree(draft, folder)
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(specvlm.ModelFolderError, match=message):
        api.load(target=tiny_dir, draft=folder)


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_draft_weights(tiny_dir, draft, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(draft, folder)
    truncate(folder / "model.safetensors")
    with pytest.raises(specvlm.ModelFolderError, match="truncated or corrupt"):
        api.load(target=tiny_dir, draft=folder)


def test_truncated_target_weights(tiny_dir, tmp_path):
    folder = tmp_path / "t"
    shutil.copytree(tiny_dir, folder)
    truncate(next(folder.glob("*.safetensors")))
    with pytest.raises(specvlm.ModelFolderError, match="cannot load the LLaVA weights"):
        api.load(target=folder)


def _probe_record(share: float) -> dict:
    """A dtype-probe record whose bfloat16 times are `share` of float32's."""
    return {"seconds_per_layer": {"float32": {"1": 2.0, "16": 4.0},
                                  "bfloat16": {"1": 2.0 * share, "16": 4.0 * share}}}  # fmt: skip


def test_auto_dtype_follows_the_cpu(tiny_dir, monkeypatch, tmp_path):
    """dtype="auto": float32 where the CPU has no native bf16 (nothing measured); where it has,
    what the speed probe chose (measured once per machine, then read back); the CPU's
    transposed weight layout only in float32 (the fallback of its packed linears)."""
    import torch

    from specvlm import dtype_probe
    from specvlm.layers import wants_fast_layout

    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    probes = []

    def fake_measure(share):
        def measure(cache=None):
            probes.append(share)
            return _probe_record(share)

        return measure

    monkeypatch.setattr(dtype_probe, "measure", fake_measure(0.5))
    monkeypatch.setattr(api, "native_bf16", lambda: False)
    assert api.auto_dtype("cpu") is torch.float32
    assert probes == []  # no native bf16: nothing to measure
    monkeypatch.setattr(api, "native_bf16", lambda: True)
    assert api.auto_dtype("cpu") is torch.bfloat16
    assert api.load(target=tiny_dir, dtype="auto").target.info.dtype is torch.bfloat16
    assert probes == [0.5]  # measured once, then remembered
    # another machine (here: another cache) where bfloat16 is not faster
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(dtype_probe, "measure", fake_measure(0.95))
    assert api.load(target=tiny_dir, dtype="auto").target.info.dtype is torch.float32
    assert probes == [0.5, 0.95]
    assert wants_fast_layout("cpu", torch.float32)
    assert not wants_fast_layout("cpu", torch.bfloat16)
    assert not wants_fast_layout("cuda", torch.float32)


def test_dtype_probe_times_both_dtypes_and_keeps_the_times(tmp_path, monkeypatch):
    """The real probe on small layers: both dtypes timed at both row counts; the choice follows
    MARGIN either side of it; the times land in the cache, the choice is made from them when
    read (a changed rule reaches old records), and an unreadable record is measured again."""
    import json

    import torch

    from specvlm import dtype_probe, layers

    assert dtype_probe.choose(_probe_record(0.89)) == "bfloat16"
    assert dtype_probe.choose(_probe_record(0.91)) == "float32"
    monkeypatch.setattr(dtype_probe, "SHAPES", ((96, 64), (64, 64), (256, 64), (64, 128)))
    measured = []
    real = dtype_probe.measure
    monkeypatch.setattr(
        dtype_probe, "measure", lambda cache: measured.append(1) or real(repeats=2, cache=cache)
    )
    monkeypatch.setattr(dtype_probe, "_one_row_memo", {})
    monkeypatch.setenv("SPECVLM_CPU_LINEAR", "auto")
    record = dtype_probe.cpu_decoding_record(tmp_path)
    assert measured == [1]
    if layers.packed_linear_available():  # float32 timed with the one-row kernels chosen here
        shapes = dtype_probe.one_row_record(tmp_path)["shapes"]
        assert set(shapes) == {f"{o}x{i}" for o, i in dtype_probe.SHAPES}
    times = record["seconds_per_layer"]
    assert set(times) == {"float32", "bfloat16"}
    assert all(set(t) == {"1", "16"} and min(t.values()) > 0 for t in times.values())
    assert record["dtype"] == dtype_probe.choose(record)
    assert 2 <= record["layers"] <= dtype_probe.MAX_LAYERS
    path = dtype_probe.probe_path(tmp_path)
    assert json.loads(path.read_text())["seconds_per_layer"] == times
    path.write_text(json.dumps(_probe_record(0.5)))  # as if measured so on this machine
    dtype_probe._record.cache_clear()
    assert dtype_probe.cpu_decoding_dtype(tmp_path) is torch.bfloat16
    path.write_text(json.dumps(_probe_record(0.95)))
    dtype_probe._record.cache_clear()
    assert dtype_probe.cpu_decoding_dtype(tmp_path) is torch.float32
    assert measured == [1]  # read, not measured
    path.write_text("not json")
    dtype_probe._record.cache_clear()
    assert dtype_probe.cpu_decoding_record(tmp_path)["cpu"] == dtype_probe.cpu_model()
    assert measured == [1, 1]
    assert json.loads(path.read_text())["version"] == dtype_probe.PROBE_VERSION


def test_embedded_models_by_name(tiny_dir, tmp_path, monkeypatch):
    from specvlm import embedded

    with pytest.raises(specvlm.InputError, match="accepted: tiny, smol"):
        api.load(model="large")
    with pytest.raises(specvlm.InputError, match="not both"):
        api.load(target=tiny_dir, model="tiny")
    monkeypatch.setattr(embedded, "ASSETS", tmp_path)  # a release without the smol pair
    assert embedded.embedded_pair("smol") == (None, None)
    with pytest.raises(specvlm.InputError, match="'smol' target is not shipped"):
        api.load(model="smol")
