"""End to end in a real browser: headless Chromium clicks and searches on the storefront page.

A small recommender is trained on a generated shop log (sessions stay in one
category, accessories follow their main products), exported to ONNX, and served by
a worker on the embedded broker.  The browser, driven by Selenium, picks a fresh
shopper, views three products of one category and searches for it; the
recommendations panel must then change from the popular fallback to personal items
mostly of that category (or its accessory category).  A screenshot is saved as
``tests/artifacts/storefront.png``.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium``
package; skipped with a message when they are missing.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from worker_processes import Worker, http, start_worker, stop_processes, wait_for, worker_settings

from recstream.model.shoplog import CATEGORIES
from recstream.streams.storefront import catalog_from_events

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BROWSER_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--window-size=1280,900",
)
#: Where the screenshot goes (kept after the run; the lead gitignores tests/artifacts/).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_S = 60.0
RECS = ("css selector", "#recs li")
#: Top recommendations checked for the category, and how many must match.
TOP, MATCHES = 5, 3
LOG_SHAPE = {"users": 300, "items": 64, "days": 14, "seed": 3}


def _require_browser() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Chromium is not installed: apt-get install -y chromium chromium-driver "
            f"(looked for {CHROMIUM} and {CHROMEDRIVER})"
        )
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed: pip install selenium")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shop log, model folder): a recommender trained on the log, and a tiny sentiment model."""
    _require_browser()
    import torch

    from recstream.export.onnx_export import export_recs, export_sentiment
    from recstream.export.tiny import tiny_sentiment
    from recstream.model.sasrec import load_recs
    from recstream.model.shoplog import generate, write_log
    from recstream.model.train_recs import TrainConfig, train_on_file

    folder = tmp_path_factory.mktemp("shop")
    log = folder / "shop.jsonl"
    write_log(log, generate(**LOG_SHAPE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(
            epochs=8, max_len=20, dim=32, layers=1, heads=1, dropout=0.1, threads=1, patience=3
        )
        train_on_file(log, "jsonl", folder / "checkpoint", config, progress=False)
        model, meta = load_recs(folder / "checkpoint")
        export_recs(model, meta, folder / "models", ("fp32",), top_k=20)
        encoder, sentiment_meta = tiny_sentiment()
        export_sentiment(encoder, sentiment_meta, folder / "models", ("fp32",))
    finally:
        torch.set_num_threads(threads)
    return log, folder / "models"


@pytest.fixture
def worker(kafka_bootstrap: str, shop: tuple[Path, Path], tmp_path: Path) -> Iterator[Worker]:
    import asyncio

    from recstream.streams.topic_admin import ALL_TOPICS, create_topics

    log, models = shop
    settings = worker_settings(kafka_bootstrap)
    asyncio.run(create_topics(settings, ALL_TOPICS))
    handle = start_worker(settings, models, tmp_path / "worker", catalog_log=log)
    try:
        wait_for(
            "the worker",
            lambda: http(f"{handle.url}/v1/users/nobody/recommendations")[0] == 200,
            [handle],
        )
        yield handle
    finally:
        stop_processes(handle.process, timeout=20)


def main_category(log: Path) -> tuple[str, set[str], list[str]]:
    """The main category with the most products: its name, expected categories, products."""
    with log.open("rb") as lines:
        catalog = catalog_from_events(orjson.loads(line) for line in lines)
    accessory = {name: CATEGORIES[acc][0] for name, _, acc, _ in CATEGORIES if acc >= 0}
    by_category: dict[str, list[str]] = {}
    for product in catalog.values():
        if product.category in accessory:
            by_category.setdefault(product.category, []).append(product.item_id)
    name = max(by_category, key=lambda c: (len(by_category[c]), c))
    return name, {name, accessory[name]}, by_category[name]


def test_clicks_and_a_search_in_the_browser_update_the_recommendations(
    worker: Worker, shop: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    category, expected, products = main_category(shop[0])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    wait = WebDriverWait(driver, WAIT_S)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "storefront.png"
    try:
        driver.get(f"{worker.url}/storefront/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#catalog .product"))
        shopper = driver.find_element(By.ID, "shopper")
        shopper.clear()
        shopper.send_keys(f"browser-{tmp_path.name[-12:]}", Keys.TAB)  # change -> new shopper
        wait.until(lambda d: d.find_element(By.ID, "recs").get_attribute("data-fallback") == "true")
        before = [
            li.get_attribute("data-item")
            for li in driver.find_elements(By.CSS_SELECTOR, "#recs li")
        ]
        assert before, "the fallback shows popular items"

        for item in products[:3]:
            driver.find_element(By.CSS_SELECTOR, f'.product[data-item="{item}"] .view').click()
            sent = f"view {item} →"
            wait.until(lambda d: sent in d.find_element(By.ID, "status").text)  # noqa: B023
        search = driver.find_element(By.ID, "search")
        search.send_keys(category, Keys.ENTER)
        wait.until(lambda d: "search" in d.find_element(By.ID, "status").text)
        # The answer to the search (the last event) arrives through Kafka and the worker.
        wait.until(lambda d: d.find_element(By.ID, "rec-trigger").text.startswith("web-search-"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#session-recent li")) == 4)
        driver.save_screenshot(str(screenshot))
        print(f"storefront screenshot: {screenshot}")

        recs = driver.find_elements(*RECS)
        after = [li.get_attribute("data-item") for li in recs]
        categories = [li.get_attribute("data-category") for li in recs[:TOP]]
        assert driver.find_element(By.ID, "recs").get_attribute("data-fallback") == "false"
        assert after != before
        assert driver.find_element(By.ID, "rec-version").text not in ("", "–")
        assert float(driver.find_element(By.ID, "rec-latency").text) >= 0
        matching = sum(c in expected for c in categories)
        assert matching >= MATCHES, f"{category}: top {TOP} categories {categories}"
        actions = [
            li.get_attribute("data-action")
            for li in driver.find_elements(By.CSS_SELECTOR, "#session-recent li")
        ]
        assert actions == ["search", "view", "view", "view"]  # newest first
    finally:
        driver.quit()
    assert screenshot.stat().st_size > 0
    sys.stdout.flush()
