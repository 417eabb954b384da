"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright): upload
an image, type a prompt, watch the answer stream in round by round, and screenshot it.

SPECVLM_SCREENSHOT=docs/images/serve-page.png writes the screenshot there (for the docs)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt install chromium)"
)

from PIL import Image, ImageStat  # noqa: E402

from specvlm import api  # noqa: E402
from specvlm.bench.suites import load_suite  # noqa: E402
from specvlm.serve.app import create_app  # noqa: E402
from specvlm.serve.config import ServeConfig  # noqa: E402
from tests.test_serve import serving  # noqa: E402


def test_page_streams_an_answer_grouped_by_round(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = api.load()
    item = load_suite("world-detailed", n=1, cache_dir=tmp_path)[0]
    image, question = Path(item.images[0]), item.messages[0]["content"]
    ref = engine.generate(
        [{"role": "user", "content": question}], images=[image], max_new_tokens=48
    )
    shot = Path(os.environ.get("SPECVLM_SCREENSHOT") or tmp_path / "serve-page.png")
    with serving(create_app(engine, ServeConfig())) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(url + "/")
            page.wait_for_selector("#examples img")  # the example scenes loaded
            page.set_input_files("#file", str(image))
            page.fill("#prompt", question.removeprefix("<image>\n"))
            page.fill("#max", "48")
            page.click("#go")
            page.wait_for_selector("#out[data-state=done]", timeout=60_000)
            assert page.inner_text("#out") == ref.text
            spans = page.locator("#out span")
            assert spans.count() == 1 + ref.stats.target_forwards  # prefill token + one per round
            shades = [spans.nth(i).get_attribute("class") for i in range(spans.count())]
            assert shades[:3] == ["r0", "r1", "r0"][: len(shades)]
            assert page.inner_text("#tau") == f"{ref.stats.tau:.2f}"
            page.check("#plain")  # the comparison: plain decoding, same text, tau 1
            page.click("#go")
            page.wait_for_selector("#out[data-state=done]", timeout=60_000)
            assert page.inner_text("#out") == ref.text and page.inner_text("#tau") == "1.00"
            page.uncheck("#plain")
            page.click("#go")
            page.wait_for_selector("#out[data-state=done]", timeout=60_000)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size[0] >= 1000 and rgb.size[1] >= 600
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200  # text, shading, the image
        assert max(ImageStat.Stat(rgb).stddev) > 20  # not one flat colour
