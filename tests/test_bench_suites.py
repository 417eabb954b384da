"""Benchmark suites: world suites are deterministic; each file format loads from a tiny fixture.

Fixtures are written in each benchmark's own layout inside tmp_path (8 x 8 PNGs from PIL).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from specvlm.bench.loaders import IMAGE, MC_DIRECT, MC_EXPLAIN, OPEN_DIRECT, BenchItem
from specvlm.bench.suites import (
    EVENTS_SUITES,
    FORMATS,
    SUITES,
    VIDEO_SUITES,
    WORLD_SUITES,
    default_cache_dir,
    detect_format,
    load_suite,
)
from specvlm.errors import DataError, InputError


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_item(it: BenchItem) -> None:
    assert it.messages[-1]["role"] == "user"
    n_ph = sum(m["content"].count(IMAGE) for m in it.messages if m["role"] == "user")
    assert n_ph == len(it.images)
    assert all(p.is_file() and p.is_absolute() for p in it.images)


# ---------------------------------------------------------------------------------------------
# World suites
# ---------------------------------------------------------------------------------------------


def test_world_suites_are_deterministic(tmp_path):
    a = load_suite("world", n=10, cache_dir=tmp_path / "a")
    b = load_suite("world", n=10, cache_dir=tmp_path / "b")
    assert [it.suite for it in a] == list(WORLD_SUITES) * 2  # interleaved
    assert len({it.id for it in a}) == 10
    for x, y in zip(a, b, strict=True):
        check_item(x)
        assert (x.id, x.messages, x.reference) == (y.id, y.messages, y.reference)
        assert [p.read_bytes() for p in x.images] == [p.read_bytes() for p in y.images]
    with Image.open(a[0].images[0]) as img:
        assert img.size == (224, 224)
    # A reload into the same cache gives the same items, and repairs a damaged file.
    a[0].images[0].write_bytes(b"junk")
    again = load_suite("world", n=10, cache_dir=tmp_path / "a")
    assert again == a and a[0].images[0].read_bytes() == b[0].images[0].read_bytes()


def test_world_suite_contents_and_sizes(tmp_path):
    assert set(SUITES) == {
        *WORLD_SUITES, "world", *VIDEO_SUITES, "world-video", *EVENTS_SUITES, "world-events"
    }  # fmt: skip
    conv = load_suite("world-conversation", cache_dir=tmp_path)
    assert len(conv) == 20 and all(it.suite == "world-conversation" for it in conv)
    assert conv[0].id == "test-000000000-image-conversation"
    assert len(conv[0].messages) == 1 and conv[0].messages[0]["content"].startswith(IMAGE + "\n")
    assert conv[0].reference
    multi = load_suite("world-multiturn", n=4, cache_dir=tmp_path)
    for it in multi:
        check_item(it)
        roles = [m["role"] for m in it.messages]
        assert len(roles) >= 3 and roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert IMAGE not in "".join(m["content"] for m in it.messages[1:])
    mc = load_suite("world-mc", n=2, cache_dir=tmp_path, mc_rewrite=True)
    assert "\nA. " in mc[0].messages[0]["content"]
    other = load_suite("world-conversation", n=2, cache_dir=tmp_path, seed=1)
    assert other[0].id == "test-001000000-image-conversation"


def test_world_multi_puts_n_scenes_in_one_prompt_and_asks_about_one(tmp_path):
    four = load_suite("world-multi-4", n=5, cache_dir=tmp_path)
    assert [it.suite for it in four] == ["world-multi-4"] * 5 and len({it.id for it in four}) == 5
    for i, it in enumerate(four):
        check_item(it)
        assert len(it.images) == 4 and len(set(it.images)) == 4
        text = it.messages[0]["content"]
        assert text.startswith("".join(f"Image {j + 1}: {IMAGE}\n" for j in range(4)))
        assert f"The question is about image {i % 4 + 1}. " in text
        # the reference describes the scene asked about: that scene's own record
        asked = int(it.images[i % 4].stem)
        assert it.id == f"test-{asked:09d}-image-detailed-of-4"
        detailed = load_suite("world-detailed", n=asked + 1, cache_dir=tmp_path)
        assert it.reference == detailed[asked].reference
    assert [int(p.stem) for p in four[1].images] == [4, 5, 6, 7]  # item i: scenes 4i .. 4i + 3
    assert load_suite("world-multi-4", n=5, cache_dir=tmp_path / "again") == [
        BenchItem(it.id, it.suite, it.messages, tuple(tmp_path / "again" / p.relative_to(tmp_path)
                  for p in it.images), it.reference)
        for it in four
    ]  # fmt: skip
    assert len(load_suite("world-multi-1", cache_dir=tmp_path)) == 20  # default n
    for bad in ("world-multi-0", "world-multi-17"):
        with pytest.raises(InputError, match=r"world-multi-N takes N = 1..16"):
            load_suite(bad, cache_dir=tmp_path)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECVLM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bench"
    monkeypatch.delenv("SPECVLM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "specvlm" / "bench"


# ---------------------------------------------------------------------------------------------
# LLaVA-Bench-in-the-Wild
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def llava_bench(tmp_path) -> Path:
    root = tmp_path / "llava-bench-in-the-wild"
    for k in range(3):
        write_png(root / "images" / f"00{k}.jpg", (k * 80, 0, 0))
    write_jsonl(
        root / "questions.jsonl",
        [
            {"question_id": k, "image": f"00{k % 3}.jpg", "text": f"Q{k}?", "category": "conv"}
            for k in range(4)
        ],
    )
    write_jsonl(root / "answers_gpt4.jsonl", [{"question_id": 0, "text": "A0."}])
    return root


def test_llava_bench(llava_bench, tmp_path):
    assert detect_format(llava_bench) == "llava-bench"
    items = load_suite(str(llava_bench), cache_dir=tmp_path / "c")
    assert [it.id for it in items] == ["0", "1", "2", "3"]
    assert items[1].messages == ({"role": "user", "content": f"{IMAGE}\nQ1?"},)
    assert items[3].images == ((llava_bench / "images" / "000.jpg").resolve(),)
    assert [it.reference for it in items] == ["A0.", None, None, None]
    assert all(it.suite == "llava-bench" for it in items)
    for it in items:
        check_item(it)
    # Prefix form and the questions file itself; n keeps the first rows, a seed samples.
    assert load_suite(f"llava-bench:{llava_bench / 'questions.jsonl'}", n=2) == items[:2]
    sampled = load_suite(str(llava_bench), n=2, seed=3)
    assert sampled == load_suite(str(llava_bench), n=2, seed=3)
    assert len(sampled) == 2 and sampled[0].id < sampled[1].id  # kept in file order


def test_llava_bench_errors(llava_bench):
    (llava_bench / "images" / "001.jpg").unlink()
    with pytest.raises(DataError, match=r"questions.jsonl:2: image file not found"):
        load_suite(str(llava_bench))
    with (llava_bench / "questions.jsonl").open("a") as fh:
        fh.write('{"question_id": 9, "image": "000.jpg"}\n')
    with pytest.raises(DataError, match=r"questions.jsonl:5: missing text"):
        load_suite(str(llava_bench))
    with (llava_bench / "questions.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DataError, match=r"questions.jsonl:6: not valid JSON"):
        load_suite(str(llava_bench))


# ---------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------


def mmmu_rows(image) -> list[dict]:
    """Three rows: images referenced in question and options, an open question, a loose image."""
    return [
        {
            "id": "validation_Art_1",
            "question": "Compare <image 2> with <image 1>. Which is older?",
            "options": "['<image 1>', 'The second one', \"Can't tell\"]",
            "answer": "B",
            "question_type": "multiple-choice",
            "image_1": image(1),
            "image_2": image(2),
            **{f"image_{k}": None for k in range(3, 8)},
        },
        {
            "id": "validation_Art_2",
            "question": "How many people are in <image 1>?",
            "options": "[]",
            "answer": "3",
            "question_type": "open",
            "image_1": image(3),
            **{f"image_{k}": None for k in range(2, 8)},
        },
        {
            "id": "validation_Art_3",
            "question": "What is the style?",
            "options": '["Baroque", "Cubism"]',
            "answer": "A",
            "question_type": "multiple-choice",
            "image_1": image(4),
            **{f"image_{k}": None for k in range(2, 8)},
        },
    ]


def check_mmmu(items: list[BenchItem], colors: dict[int, tuple]) -> None:
    assert [it.id for it in items] == ["validation_Art_1", "validation_Art_2", "validation_Art_3"]
    assert [it.reference for it in items] == ["B", "3", "A"]
    for it in items:
        check_item(it)
        assert it.suite == "mmmu" and "<image " not in it.messages[0]["content"]
    first = items[0].messages[0]["content"]
    assert first == (
        f"Question: Compare {IMAGE} with {IMAGE}. Which is older?\nOptions:\nA. {IMAGE}\n"
        f"B. The second one\nC. Can't tell\n{MC_DIRECT}"
    )

    def color(p):
        with Image.open(p) as img:
            return img.convert("RGB").getpixel((0, 0))

    # Placeholder order: <image 2>, <image 1> (question), <image 1> (option A).
    assert [color(p) for p in items[0].images] == [colors[2], colors[1], colors[1]]
    assert items[1].messages[0]["content"] == f"How many people are in {IMAGE}?\n{OPEN_DIRECT}"
    assert items[2].messages[0]["content"].startswith(f"{IMAGE}\nQuestion: What is the style?")


COLORS = {k: (k * 50, 255 - k * 50, 0) for k in range(1, 5)}


def test_mmmu_json_and_jsonl(tmp_path):
    root = tmp_path / "mmmu"
    for k, c in COLORS.items():
        write_png(root / "img" / f"{k}.png", c)
    rows = mmmu_rows(lambda k: f"img/{k}.png")
    rows[1]["image_2"] = {"bytes": None, "path": None}  # an empty image cell
    (root / "validation_Art.json").write_text(json.dumps(rows))
    assert detect_format(root / "validation_Art.json") == "mmmu"
    assert detect_format(root) == "mmmu"
    check_mmmu(load_suite(str(root), cache_dir=tmp_path / "c"), COLORS)
    # JSONL rows with {"bytes": base64} images, named with the prefix.
    b64 = lambda k: {"bytes": base64.b64encode(png_bytes(COLORS[k])).decode(), "path": None}
    write_jsonl(tmp_path / "rows.jsonl", mmmu_rows(b64))
    items = load_suite(f"mmmu:{tmp_path / 'rows.jsonl'}", cache_dir=tmp_path / "c")
    check_mmmu(items, COLORS)
    assert all(p.parent == (tmp_path / "c" / "media").resolve() for p in items[0].images)
    rewritten = load_suite(str(root), cache_dir=tmp_path / "c", mc_rewrite=True)
    assert rewritten[0].messages[0]["content"].endswith(MC_EXPLAIN)
    assert "detailed and reasonable explanation" in rewritten[1].messages[0]["content"]


def test_mmmu_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed: parquet MMMU untested")
    import pyarrow.parquet as pq

    cell = lambda k: {"bytes": png_bytes(COLORS[k]), "path": f"{k}.png"}
    rows = mmmu_rows(cell)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {key: [r[key] for r in rows] for key in rows[0]}
    types = {k: image_type if k.startswith("image_") else pa.string() for k in columns}
    table = pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()})
    root = tmp_path / "MMMU" / "Art"
    root.mkdir(parents=True)
    pq.write_table(table, root / "validation-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 1), root / "dev-00000-of-00001.parquet")  # not picked
    assert detect_format(tmp_path / "MMMU") == "mmmu"
    check_mmmu(load_suite(str(tmp_path / "MMMU"), cache_dir=tmp_path / "c"), COLORS)


def test_mmmu_errors(tmp_path):
    rows = mmmu_rows(lambda k: None)
    (tmp_path / "a.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(DataError, match=r"a.json row 0: the text refers to <image 2>"):
        load_suite(f"mmmu:{tmp_path / 'a.json'}", cache_dir=tmp_path)
    rows = mmmu_rows(lambda k: f"missing{k}.png")
    rows[2]["options"] = "Baroque or Cubism"
    (tmp_path / "b.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"b.json row 2: options 'Baroque or Cubism' is not a list"):
        load_suite(f"mmmu:{tmp_path / 'b.json'}", cache_dir=tmp_path, n=1, seed=5)
    with pytest.raises(DataError, match=r"b.json row 0 image_2: image file not found"):
        load_suite(f"mmmu:{tmp_path / 'b.json'}", cache_dir=tmp_path)
    rows = mmmu_rows(lambda k: {"bytes": base64.b64encode(b"not an image").decode()})
    write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=r"c.jsonl:1 image_2: image bytes that cannot be read"):
        load_suite(f"mmmu:{tmp_path / 'c.jsonl'}", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# ScienceQA
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def scienceqa(tmp_path) -> Path:
    root = tmp_path / "scienceqa"
    base = {"hint": "", "image": None, "split": "test", "task": "closed choice"}
    problems = {
        "5": {**base, "question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0,
              "image": "image.png", "hint": "Look at the picture."},
        "6": {**base, "question": "Which is hot?", "choices": ["ice", "fire", "snow"], "answer": 1},
        "7": {**base, "question": "Which?", "choices": ["a", "b"], "answer": 1,
              "image": "image.png", "split": "train"},
        "9": {**base, "question": "Which map?", "choices": ["x", "y"], "answer": 1,
              "image": "image.png"},
    }  # fmt: skip
    (root).mkdir()
    (root / "problems.json").write_text(json.dumps(problems))
    write_png(root / "images" / "test" / "5" / "image.png", (0, 0, 255))
    write_png(root / "test" / "9" / "image.png", (0, 255, 0))  # the other accepted layout
    return root


def test_scienceqa(scienceqa, tmp_path):
    assert detect_format(scienceqa) == "scienceqa"
    assert detect_format(scienceqa / "problems.json") == "scienceqa"
    items = load_suite(str(scienceqa), cache_dir=tmp_path)
    assert [it.id for it in items] == ["5", "9"] and [it.reference for it in items] == ["A", "B"]
    assert items[0].messages[0]["content"] == (
        f"{IMAGE}\nHint: Look at the picture.\nQuestion: Which is a mammal?\nOptions:\n"
        f"A. cat\nB. trout\n{MC_DIRECT}"
    )
    assert items[1].images == ((scienceqa / "test" / "9" / "image.png").resolve(),)
    every = load_suite(f"scienceqa-all:{scienceqa}", cache_dir=tmp_path, mc_rewrite=True)
    assert [it.id for it in every] == ["5", "6", "9"]
    assert every[1].images == () and IMAGE not in every[1].messages[0]["content"]
    assert every[1].messages[0]["content"].endswith(f"C. snow\n{MC_EXPLAIN}")
    for it in every:
        check_item(it)


def test_scienceqa_errors(scienceqa, tmp_path):
    problems = json.loads((scienceqa / "problems.json").read_text())
    problems["9"]["answer"] = 4
    (scienceqa / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(DataError, match=r"problems.json problem '9': answer must be the index"):
        load_suite(str(scienceqa), cache_dir=tmp_path)
    (scienceqa / "images" / "test" / "5" / "image.png").unlink()
    with pytest.raises(
        DataError, match=r"problem '5': image not found; looked for .*images/test/5"
    ):
        load_suite(f"scienceqa:{scienceqa}", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------------


def write_mmbench(path: Path, rows: list[list[str]]) -> Path:
    head = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    path.write_text("\n".join("\t".join(r) for r in [head, *rows]) + "\n")
    return path


def test_mmbench(tmp_path):
    img = base64.b64encode(png_bytes((9, 9, 9))).decode()
    tsv = write_mmbench(
        tmp_path / "MMBench_DEV_EN.tsv",
        [
            ["241", "What is shown?", "nan", "a dog", "a cat", "a cow", "a fox", "B", "x", img],
            [
                "242",
                '"Which, with ""quotes""?"',
                "It is red.",
                "yes",
                "no",
                "",
                "",
                "A",
                "x",
                "241",
            ],  # fmt: skip
        ],
    )
    assert detect_format(tsv) == "mmbench" and detect_format(tmp_path) == "mmbench"
    items = load_suite(str(tsv), cache_dir=tmp_path / "c")
    assert [it.id for it in items] == ["241", "242"] and [it.reference for it in items] == [
        "B",
        "A",
    ]
    assert items[0].messages[0]["content"] == (
        f"{IMAGE}\nQuestion: What is shown?\nOptions:\nA. a dog\nB. a cat\nC. a cow\nD. a fox\n"
        f"{MC_DIRECT}"
    )
    assert items[1].messages[0]["content"] == (
        f'{IMAGE}\nHint: It is red.\nQuestion: Which, with "quotes"?\nOptions:\nA. yes\nB. no\n'
        f"{MC_DIRECT}"
    )
    assert items[0].images == items[1].images  # the second row names the first row's image
    assert items[0].images[0].read_bytes() == png_bytes((9, 9, 9))
    for it in items:
        check_item(it)
    rewritten = load_suite(f"mmbench:{tmp_path}", cache_dir=tmp_path / "c", mc_rewrite=True)
    assert rewritten[0].messages[0]["content"].endswith(MC_EXPLAIN)


def test_mmbench_errors(tmp_path):
    tsv = write_mmbench(tmp_path / "a.tsv", [["1", "Q?", "", "x", "y", "", "", "A", "c", "@@@"]])
    with pytest.raises(DataError, match=r"a.tsv:2: the image column is not base64"):
        load_suite(str(tsv), cache_dir=tmp_path)
    (tmp_path / "b.tsv").write_text("index\tquestion\tA\n1\tQ?\tx\n")
    with pytest.raises(DataError, match=r"b.tsv: missing columns B, image"):
        load_suite(str(tmp_path / "b.tsv"), cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Errors common to every source
# ---------------------------------------------------------------------------------------------


def test_unknown_sources(tmp_path):
    with pytest.raises(
        DataError, match=r"no suite or file named 'world-nope'; accepted: .*world-multi-N"
    ):
        load_suite("world-nope")
    with pytest.raises(DataError, match=r"mmbench expects"):
        load_suite(f"mmbench:{tmp_path / 'missing.tsv'}")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"cannot tell the benchmark format of .*notes.txt"):
        load_suite(str(tmp_path / "notes.txt"))
    (tmp_path / "rows.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(
        DataError, match=r"cannot tell the benchmark format of .*rows.json.*llava-bench"
    ):
        load_suite(str(tmp_path / "rows.json"))
    with pytest.raises(InputError, match="n must be at least 1"):
        load_suite("world-mc", n=0, cache_dir=tmp_path)
    assert issubclass(DataError, InputError) and set(FORMATS) >= {
        "llava-bench",
        "mmmu",
        "scienceqa",
        "mmbench",
    }


def test_bench_item_checks_placeholders(tmp_path):
    msg = ({"role": "user", "content": f"{IMAGE}\n{IMAGE}\nQ"},)
    with pytest.raises(DataError, match="2 <image> placeholders but 1 images"):
        BenchItem(id="x", suite="s", messages=msg, images=(tmp_path / "a.png",))
    with pytest.raises(DataError, match="must end with a user turn"):
        BenchItem(id="x", suite="s", messages=({"role": "assistant", "content": "hi"},), images=())
