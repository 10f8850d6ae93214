"""The page of `nmt serve` in a real browser: headless Chromium, driven by Selenium, against a
real server process on a free loopback port. It types a sentence, waits for the translation,
checks the heatmap (one cell per source word x target word) and that hovering a target word
highlights the source word it attended to most, and saves a screenshot under tmp_path.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver);
Selenium uses them as installed and never downloads a browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import http_json, serve_process

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip("needs Chromium: apt-get install chromium chromium-driver",
                allow_module_level=True)
pytest.importorskip("selenium", reason="needs selenium: pip install selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SENTENCE = "The cat sees the ball."


@pytest.fixture(scope="module")
def server(trained_run):
    server = serve_process(trained_run)
    yield server.url
    server.proc.terminate()
    server.proc.wait(60)


@pytest.fixture
def browser(tmp_path):
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_the_page_translates_and_shows_the_attention(server, browser, tmp_path):
    _, expected = http_json(server + "/translate", {"text": [SENTENCE], "attention": True,
                                               "n_best": 3})
    [answer] = expected["translations"]
    att = answer["attention"]

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element(By.ID, "model").text)  # /health and /info answered
    browser.find_element(By.ID, "source").send_keys(SENTENCE)
    browser.find_element(By.ID, "translate").click()
    shown = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".result .translation"))
    assert shown[0].text == answer["text"]
    hyps = browser.find_elements(By.CSS_SELECTOR, ".result .nbest .hyp")
    assert [h.text for h in hyps] == [h["text"] for h in answer["n_best"]]
    scores = browser.find_elements(By.CSS_SELECTOR, ".result .nbest .score")
    assert [float(s.text) for s in scores] == pytest.approx([h["score"] for h in answer["n_best"]],
                                                             abs=1e-3)

    cells = browser.find_elements(By.CSS_SELECTOR, "table.heatmap td.cell")
    rows, cols = len(att["target_words"]), len(att["source_words"])
    assert len(cells) == rows * cols
    assert {(int(c.get_attribute("data-row")), int(c.get_attribute("data-col")))
            for c in cells} == {(i, j) for i in range(rows) for j in range(cols)}
    sources = browser.find_elements(By.CSS_SELECTOR, "th.src-word")
    assert [th.text for th in sources] == att["source_words"]
    assert not browser.find_elements(By.CSS_SELECTOR, "th.src-word.highlighted")

    targets = browser.find_elements(By.CSS_SELECTOR, "th.tgt-word")
    assert [th.text for th in targets] == att["target_words"]
    row = 1
    ActionChains(browser).move_to_element(targets[row]).perform()
    lit = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "th.src-word.highlighted"))
    weights = att["word_attention"][row]
    most = max(range(cols), key=weights.__getitem__)
    assert str(most) in {th.get_attribute("data-col") for th in lit}
    assert all(weights[int(th.get_attribute("data-col"))] > 0 for th in lit)
    assert "highlighted" in targets[row].get_attribute("class")

    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
