"""The pages of `nmt serve` in a real browser: headless Chromium, driven by Selenium, against a
real server process on a free loopback port, with every other host unreachable and every
request the browser makes recorded (none may leave the server). On the page it types a
sentence, waits for the translation, checks the heatmap (one cell per source word x target
word) and that hovering a target word highlights the source word it attended to most, and saves
a screenshot under tmp_path; on /docs it checks that the API is shown and can be tried.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver);
Selenium uses them as installed and never downloads a browser."""

from __future__ import annotations

import json
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
                "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}",
                # offline: every host name but the loopback's fails to resolve, and no proxy
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--no-proxy-server", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def requested(browser) -> list[str]:
    """The URLs the browser requested since the last call (from its performance log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_only_the_server(urls: list[str], server: str) -> None:
    """Every request over the network went to the server (chrome:// pages are the browser's
    own, data: and blob: URLs hold their content)."""
    network = [u for u in urls if u.split(":")[0] in ("http", "https", "ws", "wss", "ftp")]
    assert any(u.startswith(server + "/") for u in network), urls
    assert [u for u in network if not u.startswith(server + "/")] == []


def test_the_page_translates_and_shows_the_attention(server, browser, tmp_path):
    _, expected = http_json(server + "/translate", {"text": [SENTENCE], "attention": True,
                                               "n_best": 3})
    [answer] = expected["translations"]
    att = answer["attention"]

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element(By.ID, "model").text)  # /info answered
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
    assert_only_the_server(requested(browser), server)


def test_the_api_documentation_works_offline(server, browser, tmp_path):
    """/docs shows each operation, its body's fields and answers, and tries /translate, all
    from this server alone."""
    browser.get(server + "/docs")
    wait = WebDriverWait(browser, 30)
    op = wait.until(lambda b: b.find_elements(By.ID, "op-post-translate"))[0]
    assert "POST" in op.text and "/translate" in op.text
    fields = [row.find_element(By.TAG_NAME, "code").text
              for row in op.find_elements(By.CSS_SELECTOR, "tr.field")]
    assert fields == ["text", "beam", "n_best", "length_penalty", "attention"]
    answers = {row.find_elements(By.TAG_NAME, "td")[0].text
               for row in op.find_elements(By.CSS_SELECTOR, "tr.answer")}
    assert {"200", "400", "413", "422", "503", "504"} <= answers
    assert browser.find_elements(By.ID, "op-get-health")
    assert browser.find_elements(By.ID, "op-get-info")
    assert browser.find_elements(By.ID, "schema-TranslateResponse")

    request = op.find_element(By.CSS_SELECTOR, "textarea.request")
    request.clear()
    request.send_keys(json.dumps({"text": SENTENCE}))
    op.find_element(By.CSS_SELECTOR, "button.send").click()
    shown = wait.until(lambda b: op.find_element(By.CSS_SELECTOR, "pre.response").text)
    status, _, body = shown.partition("\n")
    assert status == "200" and json.loads(body)["translations"][0]["source"]
    browser.save_screenshot(str(tmp_path / "docs.png"))
    assert_only_the_server(requested(browser), server)
