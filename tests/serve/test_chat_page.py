"""The chat page of `reasonlab serve` (GET /, serve/chat.html) in a real headless Chromium driven by
Selenium, against a server on 127.0.0.1 whose model is `thinker()` (thinks "aaaa…" until the
engine's cap closes its thinking, then answers 7): streaming, the collapsed thinking, the thinking-budget
slider and a server error shown on the page. Skipped without selenium, chromium or chromedriver.
Run: pytest tests/serve/test_chat_page.py"""

import shutil
import time

import pytest

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip(
        "chromium and chromedriver are not both on PATH (Debian: apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from reasonlab.serve import Limits, ServerThread, make_app  # noqa: E402
from tests.conftest import BigramLM  # noqa: E402
from tests.serve.test_serve import TOK, thinker  # noqa: E402

CAP = 100  # the server's max_tokens: the slider's top
POSITIONS = 128  # the model's positions: a longer question is refused (400, context_length_exceeded)
STEP_S = 0.02  # a decoding step's time: a live stream sends the steps' tokens in several chunks


class Slow(BigramLM):
    def decode(self, *args):
        time.sleep(STEP_S)
        return super().decode(*args)


@pytest.fixture(scope="module")
def server():
    model = thinker()
    model.__class__, model.max_seq_len = Slow, POSITIONS
    with ServerThread(
        make_app(model, TOK, Limits(max_tokens=CAP, default_max_tokens=40), model_name="tiny")
    ) as s:
        yield s


@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def page(server, driver):
    driver.get(server.url + "/")
    return driver


def set_budget(driver, value):
    driver.execute_script(
        "const b = document.getElementById('budget'); b.value = arguments[0];"
        "for (const e of ['input', 'change']) b.dispatchEvent(new Event(e, {bubbles: true}));",
        value,
    )
    assert driver.find_element(By.ID, "budget-value").text == str(value)


def ask(driver, question):
    """Type `question`, press Enter, wait for the new assistant turn to be done; that turn."""
    before = len(driver.find_elements(By.CSS_SELECTOR, ".assistant"))
    driver.find_element(By.ID, "question").send_keys(question, Keys.ENTER)
    turn = WebDriverWait(driver, 10).until(
        lambda d: (
            (t := d.find_elements(By.CSS_SELECTOR, ".assistant")[before:])
            and t[0].get_attribute("data-done")
            and t[0]
        )
    )
    assert driver.find_element(By.ID, "send").is_enabled()
    return turn


def thinking_of(turn):
    return turn.find_element(By.CSS_SELECTOR, ".thinking-text").get_attribute("textContent")


def test_the_page_loads_with_the_servers_settings(page):
    assert page.title == "reasonlab chat"
    budget = page.find_element(By.ID, "budget")
    assert budget.get_attribute("type") == "range" and budget.get_attribute("min") == "0"
    assert budget.get_attribute("max") == str(CAP) and budget.get_attribute("value") == "64"  # min(64, cap)
    assert page.find_element(By.ID, "budget-value").text == "64"
    assert page.find_element(By.ID, "model").text == "tiny"
    assert (
        page.find_element(By.ID, "send").is_enabled() and page.find_elements(By.CSS_SELECTOR, ".turn") == []
    )


def test_an_answer_streams_in_and_its_thinking_opens_and_closes(page):
    set_budget(page, 9)
    # Every length the thinking text takes, with the time (ms) and whether Send was disabled: a mutation
    # observer's records come in between the page's handling of two chunks, so a text set once at the end
    # shows one length only.
    page.execute_script("""
        window.seen = [];
        new MutationObserver(() => {
          const t = [...document.querySelectorAll('.assistant .thinking-text')].at(-1);
          if (t && t.textContent.length !== window.seen.at(-1)?.[0]) window.seen.push([t.textContent.length,
              performance.now(), document.getElementById('send').disabled]);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});""")
    turn = ask(page, "3+4")
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text == "7"
    assert thinking_of(turn) == "a" * 9
    assert int(turn.get_attribute("data-chunks")) > 1  # thinking pieces and the answer
    seen = page.execute_script("return window.seen")
    lengths = [n for n, _, _ in seen]
    assert len(lengths) > 3 and lengths == sorted(lengths) and lengths[-1] == 9, (
        seen
    )  # it grew chunk by chunk
    assert all(disabled for _, _, disabled in seen), seen  # no second question while one streams
    first, last = next(ms for n, ms, _ in seen if n > 0), seen[-1][1]
    assert last - first >= 4 * STEP_S * 1000, (
        seen
    )  # live: it grew while the model decoded (8 steps after the first)
    assert page.find_element(By.CSS_SELECTOR, ".user").text == "3+4"

    details = turn.find_element(By.CSS_SELECTOR, "details.thinking")
    summary, text = (
        details.find_element(By.TAG_NAME, "summary"),
        turn.find_element(By.CSS_SELECTOR, ".thinking-text"),
    )
    assert summary.text == "Thinking (9 tokens)"
    assert details.get_property("open") is False and not text.is_displayed()
    summary.click()
    assert details.get_property("open") is True and text.is_displayed() and text.text == "a" * 9
    summary.click()
    assert details.get_property("open") is False and not text.is_displayed()


def test_the_slider_sets_the_thinking_length(page):
    for budget in (3, 9):
        set_budget(page, budget)
        turn = ask(
            page, "3+4"
        )  # the same conversation: the second request sends both questions and the answer
        assert thinking_of(turn) == "a" * budget and turn.find_element(By.CSS_SELECTOR, ".answer").text == "7"
        assert turn.find_element(By.CSS_SELECTOR, "summary").text == f"Thinking ({budget} tokens)"
    assert len(page.find_elements(By.CSS_SELECTOR, ".assistant")) == 2


def test_a_server_error_is_shown(page):
    set_budget(page, 2)
    turn = ask(page, "x" * 200)  # past the model's 128 positions
    error = turn.find_element(By.CSS_SELECTOR, ".error")
    assert error.is_displayed() and turn.get_attribute("data-error") == "1"
    assert "128 positions" in error.text and "HTTP 400" in error.text  # the server's message and status
    again = ask(page, "3+4")  # the page goes on after an error
    assert again.find_element(By.CSS_SELECTOR, ".answer").text == "7" and not again.find_elements(
        By.CSS_SELECTOR, ".error"
    )
