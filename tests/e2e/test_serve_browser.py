"""The web page in a real browser: Playwright (sync API) driving Debian's chromium against `anomaly-agent
serve` on a loopback port. Upload an image, wait for the verdict card, move the threshold slider, ask a
follow-up, mark feedback; screenshots at 1280x800 and 390x844 go to the test's tmp folder (paths printed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.agent_fixtures import write_set
from tests.server_fixtures import ServerThread, serve_config, serve_settings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed at /usr/bin/chromium (.ci/run installs it with apt-get install -y chromium)")
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_web_page_end_to_end(tmp_path, browser):
    from agent.server import create_app

    images = write_set(tmp_path / "images")
    home = tmp_path / "home"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with ServerThread(create_app(serve_settings(home), serve_config(home))) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        outside: list[str] = []
        page.on("request", lambda req: None if req.url.startswith((server.url, "data:", "blob:")) else outside.append(req.url))
        page.goto(server.url + "/")
        page.wait_for_selector("#backend.ok")
        assert page.text_content("#backend") == "tools only"

        page.set_input_files("#file", str(images["bad"]))
        page.fill("#category", "texture")
        page.set_input_files("#refs", [str(p) for p in sorted(images["refs"].glob("*.png"))])
        page.click("#judge")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.text_content("#verdictLabel") == "ANOMALOUS"
        score = float(page.text_content("#verdictScore"))
        assert page.locator("#evidence tr").count() >= 1 and "patch_knn" in page.text_content("#evidence")
        assert page.locator("#stageBoxes rect").count() >= 1
        assert page.is_hidden("#coverageHint")  # one verdict says nothing about the references
        page.wait_for_function("document.getElementById('stageHeat').naturalWidth > 0")

        # the slider re-labels live: above the score -> normal, back at 0.5 -> anomalous
        page.fill("#threshold", "1")
        assert page.text_content("#verdictLabel") == "NORMAL" and score <= 1.0  # shown to 2 decimals; the score is < 1
        assert page.get_attribute("#verdictCard", "data-label") == "normal"
        page.fill("#threshold", "0.5")
        assert page.text_content("#verdictLabel") == "ANOMALOUS"
        page.uncheck("#heatToggle")
        assert page.is_hidden("#stageHeat")
        page.check("#heatToggle")

        page.fill("#chatInput", "Where exactly is the defect?")
        page.click("#chatSend")
        page.wait_for_selector(".msg.assistant:not(.pending)", timeout=60_000)
        answer = page.text_content(".msg.assistant")
        assert "region" in answer and "[" in answer, answer  # answered from the measurements (no model)

        page.fill("#fbNote", "a real blob")
        page.click("#fbRight")
        page.wait_for_function("document.getElementById('fbStatus').textContent.includes('stored as a labelled anomaly')")
        assert "threshold" in page.text_content("#fbStatus")  # the reply says what happened to the threshold
        page.wait_for_selector("#recent .chip.anomalous")
        stats = page.evaluate("fetch('/v1/memory/stats').then((r) => r.json())")
        assert stats["categories"]["texture"]["anomalous"] == 1
        page.click("#fbUndo")  # a DELETE from the page itself: same origin, so the Origin check lets it through
        page.wait_for_function("document.getElementById('fbStatus').textContent.includes('Undone')")
        assert page.is_hidden("#fbUndo")
        stats = page.evaluate("fetch('/v1/memory/stats').then((r) => r.json())")
        assert stats["categories"].get("texture", {}).get("anomalous", 0) == 0

        # most verdicts with these references flagged: the page says the references may be the problem
        refs = [("references", (p.name, p.read_bytes(), "image/png")) for p in sorted(images["refs"].glob("*.png"))]
        for i in range(4):
            httpx.post(f"{server.url}/v1/detect", data={"category": "texture"}, timeout=60,
                       files=[("images", (f"b{i}.png", images["bad"].read_bytes(), "image/png")), *refs]).raise_for_status()
        page.click("#judge")
        page.wait_for_selector("#coverageHint:not([hidden])", timeout=60_000)
        assert "6 of 6 recent verdicts with these references are anomalous" in page.text_content("#coverageHint")

        page.evaluate("window.scrollTo(0, 0)")
        wide = shots / "serve-1280x800.png"
        page.screenshot(path=str(wide))
        page.set_viewport_size({"width": 390, "height": 844})
        page.evaluate("document.getElementById('verdictCard').scrollIntoView()")
        page.wait_for_timeout(200)
        overflow = page.evaluate("document.documentElement.scrollWidth")
        narrow = shots / "serve-390x844.png"
        page.screenshot(path=str(narrow))
        assert overflow <= 390, f"the page is {overflow} px wide at 390 px"
        assert page.is_visible("#verdictLabel") and page.is_visible("#chatInput")
        assert not errors, errors
        assert not outside, f"the page loaded something from elsewhere: {outside}"
        print(f"\nscreenshots: {wide} {narrow}")
    assert wide.stat().st_size > 10_000 and narrow.stat().st_size > 10_000
