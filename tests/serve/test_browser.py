"""The serve page in a real headless Chromium: pick, drop and snapshot photos; the page shows the API's answer.

`make test-browser` installs what this needs: Debian's chromium (apt-get) and Playwright, which
drives that executable (never `playwright install`, which downloads a browser). Where Chromium
cannot be installed the test is skipped, saying so.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import tiny, train

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               # a fake camera that needs no permission prompt: the webcam snapshot path runs for real
               "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def chromium_path() -> str:
    for candidate in (os.environ.get("MASKCLS_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("Chromium not found (MASKCLS_CHROMIUM, PATH, /usr/bin/chromium): `make test-browser` installs "
                "Debian's chromium with apt-get, which needs root and a package mirror")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: run "
                                   "`make test-browser` (pip install -e '.[browser]')")
    exe = chromium_path()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROME_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(prepared_dir, tmp_path_factory):
    """``maskcls serve`` on a tiny trained run, as a user starts it (port 0: any free one)."""
    run = tmp_path_factory.mktemp("browser") / "run"
    train(prepared_dir, run, tiny(train={"epochs": 1}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    log = run.parent / "serve.log"  # a file, not a pipe nobody reads (a full pipe would stall the server)
    proc = subprocess.Popen([sys.executable, "-m", "maskcls", "serve", str(run), "--port", "0", "--no-access-log"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(300):
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", log.read_text())
        if m or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert m, log.read_text()
    url = m.group(1)
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0 and "maskcls serve: stopped" in log.read_text()


def api_answer(url: str, path: Path) -> dict:
    req = urllib.request.Request(url + f"v1/predict?name={path.name}", data=path.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["results"][0]


def shown(card) -> dict:
    """What a result card shows: label, confidence, and every attribute's bars."""
    attrs = {}
    for sec in card.query_selector_all(".attr"):
        rows = sec.query_selector_all(".row")
        attrs[sec.get_attribute("data-attr")] = {
            "top": [r.get_attribute("data-class") for r in rows if "top" in r.get_attribute("class")],
            "probs": {r.get_attribute("data-class"): float(r.get_attribute("data-prob")) for r in rows},
            "pct": {r.get_attribute("data-class"): r.query_selector(".pct").inner_text() for r in rows},
            "width": {r.get_attribute("data-class"): r.query_selector(".fill").evaluate("e => e.style.width")
                      for r in rows}}
    return {"label": card.query_selector("[data-testid=label]").inner_text(),
            "confidence": card.query_selector("[data-testid=confidence]").inner_text(), "attributes": attrs}


def assert_shows(card, answer: dict) -> None:
    got = shown(card)
    assert got["label"] == answer["label"]
    assert got["confidence"] == f"confidence {100 * answer['confidence']:.1f}%"
    assert list(got["attributes"]) == list(answer["attributes"])
    for name, a in answer["attributes"].items():
        g = got["attributes"][name]
        assert g["top"] == [a["value"]] and g["probs"] == a["probabilities"]
        assert g["pct"] == {c: f"{100 * p:.1f}%" for c, p in a["probabilities"].items()}
        for c, p in a["probabilities"].items():  # the browser writes 38.0% back as 38%
            assert g["width"][c].endswith("%") and abs(float(g["width"][c][:-1]) - round(100 * p, 1)) < 1e-9


def open_page(browser, url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.requests, page.problems = [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(url)
    page.wait_for_selector("[data-testid=model][data-ready=true]", timeout=30000)
    return page


@pytest.mark.slow
def test_pick_drop_and_webcam_show_the_api_answer(browser, server, synth_root, tmp_path):
    photos = sorted((synth_root / "eval" / "images").iterdir())[:2]
    page = open_page(browser, server, 1100, 800)
    assert "folds 0" in page.inner_text("[data-testid=model]")

    # 1. the file picker, with a photo and a file that is not one
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    page.set_input_files("[data-testid=file-input]", [str(photos[0]), str(bad)])
    card = page.wait_for_selector(f"[data-testid=result][data-file='{photos[0].name}'][data-status=done]")
    page.wait_for_selector("[data-testid=result][data-file='notes.txt'][data-status=error]")
    assert_shows(card, api_answer(server, photos[0]))
    err = page.query_selector("[data-testid=result][data-file='notes.txt'] [data-testid=error]").inner_text()
    assert err.startswith("notes.txt: not an image")

    # 2. drag and drop
    data = base64.b64encode(photos[1].read_bytes()).decode()
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                              cancelable: true}));
    }""", [data, photos[1].name])
    page.wait_for_selector(f"[data-testid=result][data-file='{photos[1].name}'][data-status=done]")
    assert_shows(page.query_selector(f"[data-testid=result][data-file='{photos[1].name}']"),
                 api_answer(server, photos[1]))

    # 3. a webcam snapshot (Chromium's fake camera)
    page.click("#camopen")
    for _ in range(150):  # polled from here: the page's CSP forbids the eval that wait_for_function uses
        if page.evaluate("() => document.getElementById('video').videoWidth") > 0:
            break
        time.sleep(0.1)
    page.click("#snap")
    page.wait_for_selector("[data-testid=result][data-file^='webcam-'][data-status=done]", timeout=30000)

    assert all(u.startswith(server) or u.startswith(("blob:", "data:")) for u in page.requests), page.requests
    # no script error, no CSP refusal, no failed load but the refused notes.txt
    assert [m for m in page.problems if "status of 415" not in m] == [], page.problems
    page.close()


@pytest.mark.slow
def test_phone_sized_window(browser, server, synth_root, tmp_path):
    photo = sorted((synth_root / "eval" / "images").iterdir())[2]
    page = open_page(browser, server, 375, 667)
    page.set_input_files("[data-testid=file-input]", [str(photo)])
    page.wait_for_selector("[data-testid=result][data-status=done]")
    assert_shows(page.query_selector("[data-testid=result]"), api_answer(server, photo))
    # nothing wider than the screen: no sideways scrolling
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = page.query_selector("[data-testid=result]").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    page.close()
