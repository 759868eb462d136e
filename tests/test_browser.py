"""The built book as its readers see it: every page in headless Chromium, offline.

Each page of the book (built from the notebooks' stored outputs, as in ``test_book.py``) is served
on loopback and opened in Debian's Chromium driven by Playwright, with every request that would
leave the machine aborted and recorded. A page passes when it logs no console error, requests
nothing outside the machine, gets no failed response, shows every image, and has all its math
typeset by MathJax (no raw TeX left in the prose); the search page finds a chapter's word; and on a
phone (375 px wide) no page scrolls sideways and no paragraph is wider than the screen.

Needs Playwright's Python package and a Chromium (``/usr/bin/chromium``, Debian's ``chromium``;
``COURSE_CHROMIUM`` names another; Playwright's own browser download is not used). Where either is
missing the tests are skipped, saying which; ``.ci/run`` installs both and sets
``COURSE_REQUIRE_BROWSER=1``, which turns that skip into a failure, so CI never passes without them.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from conftest import REPO
from test_book import _build, stored_outputs_config

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("COURSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a machine without a network: no first-run, sync, update or background connections,
# each of which would be a request leaving the machine (and a console error when it is refused).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 375, "height": 812}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None


def _playwright():
    """Playwright's entry point, or a skip naming what is missing (a failure where CI requires the browser)."""
    missing = None
    if sync_playwright is None:
        missing = "Playwright's Python package is not installed (pip install playwright)"
    elif not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing = f"no Chromium at {CHROMIUM} (Debian's chromium package; COURSE_CHROMIUM names another)"
    if missing and os.environ.get("COURSE_REQUIRE_BROWSER") == "1":  # .ci/run installs both and sets this
        pytest.fail(f"the browser tests must run here: {missing}")
    if missing:
        pytest.skip(f"{missing}: the book was not checked in a browser")
    return sync_playwright


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    _playwright()  # skip before the build when there is no browser
    out = tmp_path_factory.mktemp("book")
    done = _build(REPO, out, stored_outputs_config(tmp_path_factory.mktemp("config")))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out / "_build" / "html"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(html):
    """The built book served on loopback: its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Reader:
    """One offline browser context: what each page it opened did wrong is in ``problems``."""

    def __init__(self, browser, viewport: dict | None = None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.problems: list[str] = []

    def _route(self, route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.problems.append(f"request leaving the machine: {route.request.url}")
            route.abort()

    def open(self, url: str):
        page = self.context.new_page()
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"console error: {msg.text}"))
        page.on("pageerror", lambda err: self.problems.append(f"script error: {err}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        # Read before the page opens: once a redirect has moved on, its body is gone from the browser.
        target = redirect_target(self.context.request.get(url).text())
        page.goto(url, wait_until="load")
        if target is not None:
            # A redirect page (the root index.html): evaluating on it races the navigation it starts
            # (the context is destroyed under the script), so wait until the page it names has loaded.
            page.wait_for_url(urljoin(url, target), wait_until="load")
        page.evaluate(SETTLED)
        return page

    def close(self) -> None:
        self.context.close()


REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\s*\d+\s*;\s*url=([^"']+)["']""", re.I)


def redirect_target(html: str) -> str | None:
    """Where a page's ``<meta http-equiv="refresh">`` sends the reader, or None for a page of its own."""
    found = REFRESH.search(html)
    return found.group(1).strip() if found else None


@pytest.fixture(scope="module")
def browser():
    with _playwright()() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def pages(html: Path) -> list[str]:
    """Every page of the book, relative to its root (the theme's own templates in _static are not pages)."""
    return sorted(
        p.relative_to(html).as_posix()
        for p in html.rglob("*.html")
        if not p.relative_to(html).parts[0].startswith(("_static", "_sources", "_images"))
    )


# A loaded page once MathJax has typeset it and its fonts are in.
SETTLED = """async () => {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
    await document.fonts.ready;
}"""

# Every image, lazy ones too, given the chance to load; the ones that did not.
BROKEN_IMAGES = """async () => {
    const images = [...document.images];
    for (const img of images) img.loading = "eager";
    await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
        img.addEventListener("load", done); img.addEventListener("error", done);
    })));
    return images.filter(img => !(img.naturalWidth > 0)).map(img => img.getAttribute("src"));
}"""

# MathJax's state once it has typeset the page: output elements, errors, and math left as raw TeX.
MATH = """() => {
    const math = [...document.querySelectorAll(".math")];
    const raw = math.filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.slice(0, 80));
    const prose = [...document.querySelectorAll("article p, article li, article td, article h1, article h2")]
        .filter(e => !e.closest("pre, code, .cell_output, .output"))
        .map(e => e.innerText)
        .filter(t => /\\$\\$|\\\\\\(|\\\\\\[|\\\\begin\\{/.test(t))
        .map(t => t.slice(0, 80));
    return {
        loaded: !!(window.MathJax && MathJax.startup),
        math: math.length,
        typeset: document.querySelectorAll("mjx-container").length,
        errors: document.querySelectorAll("mjx-merror").length,
        raw: raw.concat(prose),
    };
}"""

# What is wider than a phone's screen: the page itself, and paragraphs of text.
TOO_WIDE = """() => {
    const width = document.documentElement.clientWidth;
    const page = document.scrollingElement;
    const wide = [...document.querySelectorAll("p, li, h1, h2, h3, dd, dt, blockquote")]
        .filter(e => e.getBoundingClientRect().width > width + 1 || e.scrollWidth > e.clientWidth + 1)
        .map(e => e.tagName + ": " + e.textContent.trim().slice(0, 60));
    return {width, scroll: page.scrollWidth, client: page.clientWidth, wide};
}"""


def test_every_page_loads_offline_with_its_images_and_math(html, site, browser):
    """Every page: no console error, nothing requested from outside, every image shown, all math typeset.
    A chapter page also typesets some math, shows figures and offers its notebook for download."""
    reader = Reader(browser)
    report = {}
    try:
        for path in pages(html):
            page = reader.open(f"{site}/{path}")
            problems = reader.problems
            problems += [f"image not loaded: {src}" for src in page.evaluate(BROKEN_IMAGES)]
            math = page.evaluate(MATH)
            if math["math"] and not (math["loaded"] and math["typeset"]):
                problems.append(f"MathJax typeset nothing of {math['math']} formulas")
            if math["errors"]:
                problems.append(f"{math['errors']} MathJax errors")
            problems += [f"raw TeX: {text!r}" for text in math["raw"]]
            chapter = Path(path).stem
            if path.startswith("book/ch"):
                if not math["typeset"]:
                    problems.append("no formula typeset")
                if not page.evaluate("document.querySelectorAll('article img[src$=\".png\"]').length"):
                    problems.append("no figure shown")
                links = page.eval_on_selector_all("a[href$='.ipynb']", "links => links.map(a => a.href)")
                notebook = next((link for link in links if link.endswith(f"/{chapter}.ipynb")), None)
                if notebook is None:
                    problems.append(f"no download of its notebook (links: {links})")
                elif not reader.context.request.get(notebook).json().get("cells"):
                    problems.append(f"its notebook {notebook} has no cells")
            if problems:
                report[path] = problems
            reader.problems = []
            page.close()
    finally:
        reader.close()
    assert pages(html) and not report, "\n".join(f"{p}:\n  " + "\n  ".join(found) for p, found in report.items())


def test_search_finds_a_word_of_a_chapter(site, browser):
    reader = Reader(browser)
    try:
        page = reader.open(f"{site}/search.html?q=tokenizer")
        page.wait_for_selector("#search-results ul.search li", timeout=30_000)
        found = page.eval_on_selector_all("#search-results ul.search li a", "links => links.map(a => a.href)")
        assert any("/book/ch01_tokenization.html" in link for link in found), found
        assert not reader.problems, reader.problems
    finally:
        reader.close()


def test_no_page_scrolls_sideways_on_a_phone(html, site, browser):
    reader = Reader(browser, viewport=PHONE)
    report = {}
    try:
        for path in pages(html):
            page = reader.open(f"{site}/{path}")
            wide = page.evaluate(TOO_WIDE)
            if wide["scroll"] > wide["client"] or wide["wide"]:
                report[path] = wide
            page.close()
        assert not reader.problems, reader.problems
    finally:
        reader.close()
    assert not report, "\n".join(f"{path}: {found}" for path, found in report.items())


BAD_PAGE = r"""<!doctype html><html><head><meta charset="utf-8"></head><body><article>
<p>Raw math: \(x^2\) and $$y$$</p>
<img src="missing.png">
<img src="https://example.com/remote.png">
<script>console.error("broken on purpose")</script>
</article></body></html>"""


def test_the_checks_catch_what_they_look_for(tmp_path, browser):
    """The checks are not vacuous: a page with each fault, served the same way, is caught on each."""
    (tmp_path / "bad.html").write_text(BAD_PAGE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reader = Reader(browser)
    try:
        page = reader.open(f"http://127.0.0.1:{server.server_address[1]}/bad.html")
        broken = page.evaluate(BROKEN_IMAGES)
        raw = page.evaluate(MATH)["raw"]
    finally:
        reader.close()
        server.shutdown()
        server.server_close()
    assert sorted(broken) == ["https://example.com/remote.png", "missing.png"]
    assert raw and "\\(x^2\\)" in raw[0]
    found = "\n".join(reader.problems)
    assert "request leaving the machine: https://example.com/remote.png" in found, found
    assert "console error: broken on purpose" in found, found
    assert "HTTP 404" in found, found


def test_launch_buttons_are_one_setting():
    """``repository.url`` alone turns Binder and Colab on (seen in a build: each chapter links its notebook)."""
    from types import SimpleNamespace

    import yaml

    from book._ext import course_book

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["repository"]["url"] == "", "the course's own repository is not published: buttons off"
    services = {k: v for k, v in config["launch_buttons"].items() if k in course_book.LAUNCH_SERVICES}
    assert services == {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com"}
    for url, expected in (("", {}), ("https://github.com/you/tokens-journey", services)):
        options = {"launch_buttons": dict(config["launch_buttons"]), "repository_url": url}
        sphinx = SimpleNamespace(html_theme_options=options, html_static_path=[], html_context={})
        course_book._configure(None, sphinx)
        assert {k: v for k, v in options["launch_buttons"].items() if k in course_book.LAUNCH_SERVICES} == expected
        assert sphinx.html_context["default_mode"] == "auto"


def test_a_redirect_page_is_recognised():
    """The root index.html jupyter-book writes only refreshes to the first page: the reader waits for that page."""
    assert redirect_target('<meta http-equiv="Refresh" content="0; url=intro.html" />') == "intro.html"
    assert redirect_target("<meta http-equiv='refresh' content='0;url=book/ch01.html'>") == "book/ch01.html"
    assert redirect_target('<meta charset="utf-8"><p>url=intro.html</p>') is None
