"""Time to the first results paint of the search page, in a real headless Chromium.

Against a running server (``shoprank demo`` or ``shoprank serve``), each query is opened as a
shared URL (``/?q=...``): the server searches and renders the results, and the browser paints
them. Reported per query: when the response ended and the first contentful paint, from the
browser's own performance timing (ms after navigation start), and the server's search time.

    python3 -m bench.web_paint --url http://127.0.0.1:8080 [--rounds 3] [--query TEXT ...]

Needs Debian's chromium and chromium-driver (scripts/chromium install) and selenium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from typing import Any
from urllib.parse import quote_plus

from bench.machine import cpu_model

QUERIES = ("wireless earbuds", "kindle", "silicone sealant", "running shoes for men",
           "coffee grinder")

_TIMING = """
const n = performance.getEntriesByType('navigation')[0];
const p = performance.getEntriesByName('first-contentful-paint')[0];
const total = document.querySelector('td[data-stage=total]');
return [n.responseEnd, p ? p.startTime : null, total ? Number(total.textContent) : null,
        document.querySelectorAll('#results li.result').length];
"""


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        sys.exit("chromium and chromedriver are not installed: run scripts/chromium install")
    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,1400"):
        options.add_argument(argument)
    options.page_load_strategy = "eager"  # pictures from the shop's image host do not count
    return webdriver.Chrome(options=options, service=Service(driver))


Row = tuple[str, list[float], list[float], list[float]]


def measure(url: str, queries: list[str], rounds: int) -> list[Row]:
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    rows: list[Row] = []
    try:
        browser.get(f"{url}/?q={quote_plus(queries[0])}")  # warms the models and the page files
        for query in queries:
            response_end, paint, server = [], [], []
            for _ in range(rounds):
                browser.get(f"{url}/?q={quote_plus(query)}&explain=1")
                WebDriverWait(browser, 60).until(lambda b: b.execute_script(
                    "return performance.getEntriesByName('first-contentful-paint').length"))
                end, fcp, total, count = browser.execute_script(_TIMING)
                if not count:
                    sys.exit(f"no results for {query!r}: is the index empty?")
                response_end.append(end)
                paint.append(fcp)
                server.append(total)
            rows.append((query, response_end, paint, server))
    finally:
        browser.quit()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--query", action="append", help="a query (repeatable)")
    args = parser.parse_args()
    rows = measure(args.url.rstrip("/"), args.query or list(QUERIES), args.rounds)
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores. Server {args.url}; "
          f"{args.rounds} navigations a query, medians (max); ms after navigation start.\n")
    print("| query | server search ms | response end ms | first contentful paint ms |")
    print("| --- | ---: | ---: | ---: |")
    for query, ends, paints, server in rows:
        print(f"| {query} | {statistics.median(server):.0f} ({max(server):.0f}) "
              f"| {statistics.median(ends):.0f} ({max(ends):.0f}) "
              f"| {statistics.median(paints):.0f} ({max(paints):.0f}) |")


if __name__ == "__main__":
    main()
