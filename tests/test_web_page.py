"""The web page of ``bfcl serve``: its files, POST /explain, WCAG contrast, and a real Chromium.

The server tests use a tiny random-weight model with the real EfficientNet-Lite0 image path
(random weights tag plenty of words, with and without the picture, which is all a page test
needs). The browser test drives Debian's ``chromium`` through ``chromedriver`` (selenium) on
127.0.0.1, with every other host unresolvable: the page must work with the network cut.
"""

from __future__ import annotations

import base64
import fnmatch
import html.parser
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

from bfcl.inference.explain import explain
from bfcl.inference.predictor import Predictor
from bfcl.serving.app import ServeLimits, create_app
from bfcl.serving.page import CSP, train_posts_with_image
from helpers import running as serve_on_loopback
from helpers import tiny_model

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BFCL_SHARED_DATA", ROOT.parent / "shared" / "data"))  # as in conftest.py
STATIC = files("bfcl.serving").joinpath("static")
TYPES = ("PER", "LOC", "ORG", "MISC")
# A real Twitter-2015 post (IMGID:102, shortened) and its picture.
TWEET = "RT @1droadtrips : Here was our view from Chicago aug 30 !"
TWEET_IMAGES = SHARED_DATA / "twitter2015" / "images_sample"


# --------------------------------------------------------------------------- servers


@contextmanager
def running(app) -> Iterator[str]:
    """The server on loopback; its base URL with a trailing slash, as the page's relative URLs expect."""
    with serve_on_loopback(app, HOST) as base:
        yield base + "/"


def checkpoint(path: Path, train_posts_with_image: int | None, **overrides) -> Path:
    """A tiny checkpoint; ``training_data`` recorded in config.json as the trainer records it
    (through save_pretrained, so the manifest matches: an edited config.json is refused)."""
    extra = None
    if train_posts_with_image is not None:
        extra = {"training_data": {"train_posts": 20, "train_posts_with_image": train_posts_with_image}}
    return tiny_model(image_dim=1280, **overrides).save_pretrained(path, extra=extra)


def _jpeg(width: int = 96, height: int = 64) -> bytes:
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("page")
    app = create_app(checkpoint(root / "ckpt", 5), feature_cache=root / "features")
    with running(app) as url, httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        yield SimpleNamespace(url=url, app=app, http=http, predictor=app.state.predictor, root=root)


def assert_error(resp: httpx.Response, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    for needle in needles:
        assert needle.lower() in detail.lower(), detail
    assert "Traceback" not in resp.text
    return detail


# --------------------------------------------------------------------------- the page's files


def test_page_and_its_files_are_served_with_a_self_only_policy(srv):
    page = srv.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "default-src 'self'" in CSP
    assert page.text == STATIC.joinpath("index.html").read_text(encoding="utf-8")
    for name, ctype in (("page.css", "text/css"), ("page.js", "javascript")):
        resp = srv.http.get(f"/static/{name}")
        assert resp.status_code == 200 and ctype in resp.headers["content-type"], name
        assert resp.text == STATIC.joinpath(name).read_text(encoding="utf-8")
        assert resp.headers["content-security-policy"] == CSP
    assert srv.http.get("/static/nope.js").status_code == 404
    assert srv.http.get("/static/../app.py").status_code == 404


def test_page_fetches_nothing_from_elsewhere():
    """Every reference is relative to the server: no CDN, no font service, no absolute URL."""
    names = sorted(p.name for p in STATIC.iterdir())
    assert names == ["index.html", "page.css", "page.js"]
    for name in names:
        text = STATIC.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names another host"
        assert "@import" not in text and "fetch(\"/" not in text and "fetch('/" not in text, name
    refs = re.findall(r'(?:src|href)="([^"]*)"', STATIC.joinpath("index.html").read_text(encoding="utf-8"))
    assert refs and all(not re.match(r"^[a-z]+:(?!,)|^//|^/", r) for r in refs), refs


def test_static_files_are_package_data():
    """pyproject.toml's package-data patterns take every file the page needs into the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["bfcl.serving"]
    for p in STATIC.iterdir():
        assert any(fnmatch.fnmatch(f"static/{p.name}", pat) for pat in patterns), p.name


class _Inputs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict] = []
        self.labels: set[str] = set()
        self.roles: dict[str, str] = {}
        self.lang = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        if tag in ("input", "textarea", "select"):
            self.controls.append({"tag": tag, **a})
        if tag == "label" and a.get("for"):
            self.labels.add(a["for"])
        if a.get("id") and a.get("role"):
            self.roles[a["id"]] = a["role"]


def test_inputs_are_labelled_and_messages_announced():
    parser = _Inputs()
    parser.feed(STATIC.joinpath("index.html").read_text(encoding="utf-8"))
    assert parser.lang == "en"
    assert {c["id"] for c in parser.controls} == {"text", "image"}
    for c in parser.controls:
        assert c["id"] in parser.labels, f"{c['tag']}#{c['id']} has no <label for>"
        assert "hidden" not in c and "tabindex" not in c, "a hidden file input cannot be reached by keyboard"
    assert parser.roles["error"] == "alert" and parser.roles["status"] == "status"


# --------------------------------------------------------------------------- contrast (WCAG 2.x)


def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula_matches_known_values():
    assert contrast("#000", "#fff") == pytest.approx(21.0)
    assert contrast("#fff", "#fff") == pytest.approx(1.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)  # the lightest AA grey on white
    assert contrast("#777777", "#ffffff") < 4.5


def css_colours() -> dict[str, str]:
    css = STATIC.joinpath("page.css").read_text(encoding="utf-8")
    return dict(re.findall(r"--([A-Za-z0-9-]+):\s*(#[0-9a-fA-F]{3,6})\s*;", css))


def test_entity_and_page_colours_pass_wcag_aa():
    colours = css_colours()
    text_pairs = [("fg", "bg"), ("muted", "bg"), ("fg", "panel-bg"), ("muted", "panel-bg"), ("accent-fg", "accent-bg"),
                  ("accent-bg", "bg"), ("error-fg", "error-bg"), ("notice-fg", "notice-bg")]  # fmt: skip
    for t in (*TYPES, "other"):
        text_pairs += [("ent-fg", f"ent-{t}-bg"), ("ent-tag-fg", f"ent-{t}-bg")]
    ratios = {}
    for fg, bg in text_pairs:
        ratios[fg, bg] = contrast(colours[fg], colours[bg])
        assert ratios[fg, bg] >= 4.5, f"--{fg} on --{bg}: {ratios[fg, bg]:.2f} < 4.5 (WCAG AA, normal text)"
    # Non-text (WCAG 1.4.11): the type's underline against the panel, focus ring and field borders.
    for fg, bg in [*((f"ent-{t}-border", "panel-bg") for t in (*TYPES, "other")), ("focus", "bg"), ("focus", "panel-bg"), ("line", "bg")]:
        assert contrast(colours[fg], colours[bg]) >= 3.0, f"--{fg} on --{bg}: {contrast(colours[fg], colours[bg]):.2f} < 3"
    # Each type gets its own colour, and the stylesheet gives every type a rule using it.
    assert len({colours[f"ent-{t}-bg"].lower() for t in (*TYPES, "other")}) == 5
    css = STATIC.joinpath("page.css").read_text(encoding="utf-8")
    for t in TYPES:
        assert f'.ent[data-type="{t}"] {{ background: var(--ent-{t}-bg)' in css, t


# --------------------------------------------------------------------------- POST /explain


def test_explain_endpoint_is_the_library_explanation(srv):
    photo = _jpeg()
    by_form = srv.http.post("/explain", data={"text": TWEET}, files={"image": ("p.jpg", photo, "image/jpeg")})
    assert by_form.status_code == 200, by_form.text
    body = by_form.json()
    by_json = srv.http.post("/explain", json={"text": TWEET, "image": base64.b64encode(photo).decode()}).json()
    assert by_json == body
    lib = explain(srv.predictor, TWEET, photo).to_dict()
    for e in lib["entities"]:
        e.setdefault("note", None)  # the API always has the key
    assert body["entities"] == lib["entities"] and body["bottlenecks"] == lib["bottlenecks"]
    assert body["grid"] == [7, 7] and body["has_image"] is True
    # Names, offsets and scores are /predict's answer for the same input.
    predicted = srv.http.post("/predict", data={"text": TWEET}, files={"image": ("p.jpg", photo, "image/jpeg")}).json()
    assert body["entities"], "the tiny model should tag a word to draw a map for"
    keys = ("text", "type", "start", "end", "score")
    assert [{k: e[k] for k in keys} for e in body["entities"]] == predicted["entities"]
    assert body["tokens"] == predicted["tokens"] and body["labels"] == predicted["labels"]
    for e in body["entities"]:
        assert len(e["heatmap"]) == 7 and all(len(r) == 7 for r in e["heatmap"])
        assert sum(map(sum, e["heatmap"])) == pytest.approx(1.0, abs=1e-4)
    schema = srv.http.get("/openapi.json").json()
    assert "ExplainOut" in schema["components"]["schemas"] and "/explain" in schema["paths"]
    upload = srv.http.post("/explain/upload", data={"text": TWEET}, files={"image": ("p.jpg", photo, "image/jpeg")})
    assert upload.status_code == 200 and upload.json() == body
    assert set(schema["paths"]["/explain/upload"]["post"]["requestBody"]["content"]) == {"multipart/form-data"}


def test_explain_refusals_name_the_problem(srv, tmp_path):
    post = srv.http.post
    assert_error(post("/explain", data={"text": TWEET}), 422, "image", "missing")
    assert_error(post("/explain", json={"text": TWEET}), 422, "image", "missing")
    broken = {"image": ("b.jpg", b"this is not a picture", "image/jpeg")}
    assert_error(post("/explain", data={"text": TWEET}, files=broken), 422, "not a readable image")
    truncated = {"image": ("t.jpg", _jpeg(400, 300)[:900], "image/jpeg")}
    assert_error(post("/explain", data={"text": TWEET}, files=truncated), 422, "could not be decoded")
    assert_error(post("/explain", content=b"x", headers={"content-type": "text/plain"}), 415, "text/plain")
    assert_error(post("/explain", json={"text": 3, "image": None}), 422, "text")
    tight = ServeLimits(max_image_bytes=1_000, max_text_chars=20)
    with running(create_app(srv.predictor, limits=tight)) as url, httpx.Client(base_url=url, trust_env=False, timeout=60) as http:
        big = {"image": ("p.jpg", _jpeg(), "image/jpeg")}
        assert_error(http.post("/explain", data={"text": "short"}, files=big), 413, "1000")
        small = {"image": ("p.jpg", _jpeg(8, 8), "image/jpeg")}
        assert len(small["image"][1]) < 1_000
        assert_error(http.post("/explain", data={"text": "x" * 21}, files=small), 422, "21 characters")
    text_only = create_app(Predictor.load(checkpoint(tmp_path / "t", None, multimodal=False), device="cpu"))
    with running(text_only) as url, httpx.Client(base_url=url, trust_env=False, timeout=60) as http:
        assert http.get("/info").json()["uses_image"] is False
        small = {"image": ("p.jpg", _jpeg(), "image/jpeg")}
        assert_error(http.post("/explain", data={"text": TWEET}, files=small), 422, "text-only")


def test_info_says_how_many_training_posts_had_a_picture(srv, tmp_path):
    assert srv.http.get("/info").json()["train_posts_with_image"] == 5
    old = Predictor.load(checkpoint(tmp_path / "old", None), device="cpu")
    assert train_posts_with_image(old) is None  # checkpoints from before the trainer recorded it
    with running(create_app(old)) as url:
        assert httpx.get(url + "info", trust_env=False).json()["train_posts_with_image"] is None
    old.train_posts_with_image = 0  # the Predictor attribute wins where it exists
    assert train_posts_with_image(old) == 0
    old.model.checkpoint_info["training_data"] = {"train_posts_with_image": "many"}
    old.train_posts_with_image = None
    assert train_posts_with_image(old) is None  # not a count: unknown, not a crash


# --------------------------------------------------------------------------- a real browser

CHROMIUM = os.environ.get("BFCL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("BFCL_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1400",
    # The network cut: no host but the loopback server resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)  # fmt: skip


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium with a fresh profile, driven through Debian's chromedriver."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium not found ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="bfcl-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.set_script_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"timed out waiting for {what}")


def same_entities(a: list[dict], b: list[dict]) -> bool:
    strip = lambda es: [{k: v for k, v in e.items() if k != "score"} for e in es]  # noqa: E731
    return strip(a) == strip(b) and all(abs(x["score"] - y["score"]) < 1e-4 for x, y in zip(a, b))


def page_entities(driver, panel: str) -> list[dict]:
    """The highlighted names of one column, read from the page as a person sees them."""
    out = []
    for el in driver.find_elements("css selector", f"#{panel} [data-entity]"):
        shown = el.find_element("css selector", ".ent-tag").text.split()
        assert shown[0] == el.get_attribute("data-type") and shown[1] == f"{float(el.get_attribute('data-score')):.2f}"
        out.append({
            "text": el.find_element("css selector", ".ent-text").text,
            "type": el.get_attribute("data-type"),
            "start": int(el.get_attribute("data-start")),
            "end": int(el.get_attribute("data-end")),
            "score": float(el.get_attribute("data-score")),
        })  # fmt: skip
    return out


def canvas_png(driver) -> str:
    return driver.execute_script("return document.getElementById('heat-canvas').toDataURL('image/png')")


@pytest.mark.browser
@pytest.mark.shared_data
def test_page_in_a_real_browser(srv, tmp_path):
    from selenium.webdriver.common.keys import Keys

    if not (TWEET_IMAGES / "102.jpg").is_file():
        pytest.skip(f"real tweet images not found at {TWEET_IMAGES} (set BFCL_SHARED_DATA to run this test)")
    photo = TWEET_IMAGES / "102.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a picture, whatever its name says")
    url = srv.url
    with chromium() as driver:
        driver.get(url)
        wait_for(driver, lambda d: "Model:" in d.find_element("id", "model-info").text, "the model's details")
        assert not driver.find_element("id", "notice").is_displayed()  # this model saw 5 pictures

        # Type a post, give it its picture, send it from the keyboard (Ctrl+Enter).
        box = driver.find_element("id", "text")
        box.send_keys(TWEET)
        driver.find_element("id", "image").send_keys(str(photo))
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        wait_for(driver, lambda d: d.find_element("id", "results").get_attribute("data-runs") == "1", "the answer")
        assert not driver.find_element("id", "error").is_displayed()

        with httpx.Client(base_url=url, trust_env=False, timeout=60) as http:
            api = http.post("/predict", data={"text": TWEET}, files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
            api_text_only = http.post("/predict", json={"text": TWEET}).json()
            maps = http.post("/explain", data={"text": TWEET}, files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
        shown = page_entities(driver, "with-image")
        assert len(shown) >= 2, "the tiny model tags several words; the test needs two to switch maps"
        # the page's column comes from /explain, which runs the explicit attention path (it needs the
        # maps) where /predict runs the fused kernel: the same entities, scores equal to float noise
        assert same_entities(shown, api["entities"])
        assert same_entities(page_entities(driver, "text-only"), api_text_only["entities"])

        # The first name's map is drawn; selecting another (by click, then by keyboard) redraws it.
        heat = driver.find_element("id", "heat")
        assert heat.is_displayed() and heat.get_attribute("data-entity") == "0"
        first = canvas_png(driver)
        buttons = driver.find_elements("css selector", "#with-image button.ent")
        buttons[1].click()
        wait_for(driver, lambda d: heat.get_attribute("data-entity") == "1", "the second name's map")
        assert buttons[1].get_attribute("aria-pressed") == "true" and buttons[0].get_attribute("aria-pressed") == "false"
        assert canvas_png(driver) != first
        grid = maps["entities"][1]["heatmap"]
        peak = max((v, r, c) for r, row in enumerate(grid) for c, v in enumerate(row))
        caption = driver.find_element("id", "heat-caption").text
        assert f'"{shown[1]["text"]}"' in caption and f"row {peak[1] + 1}, column {peak[2] + 1} of 7" in caption, caption
        buttons[0].send_keys(Keys.ENTER)
        wait_for(driver, lambda d: heat.get_attribute("data-entity") == "0", "keyboard selection")
        assert canvas_png(driver) == first

        shot = tmp_path / "web-page.png"
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as img:
            assert img.format == "PNG" and img.width >= 800

        # Everything the page loaded came from this server.
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith(url) for u in loaded), loaded

        # Offsets count code points, JavaScript strings UTF-16: a character beyond the BMP
        # before the names must not shift them (set by script: chromedriver types BMP only).
        astral = "\U0001F600\U0001D4B3 " + TWEET
        driver.execute_script("const t = document.getElementById('text'); t.value = arguments[0]; t.dispatchEvent(new Event('input'))", astral)
        driver.find_element("id", "submit").click()
        wait_for(driver, lambda d: d.find_element("id", "results").get_attribute("data-runs") == "2", "the second answer")
        with httpx.Client(base_url=url, trust_env=False, timeout=60) as http:
            api = http.post("/predict", data={"text": astral}, files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
        assert api["entities"] and page_entities(driver, "with-image") == api["entities"]
        assert driver.find_element("id", "text-count").text == str(len(astral))

        # A broken file: the server's 422 is shown as a readable message.
        driver.find_element("id", "image").send_keys(str(broken))
        driver.find_element("id", "submit").click()
        error = driver.find_element("id", "error")
        wait_for(driver, lambda d: error.is_displayed(), "the error message")
        assert "HTTP 422" in error.text and "not a readable image" in error.text, error.text
        assert not driver.find_element("id", "results").is_displayed()


@pytest.mark.browser
@pytest.mark.shared_data
def test_page_notice_and_limits_in_a_real_browser(srv, tmp_path):
    """A model trained without pictures says so; a picture over the server's limit shows the 413."""
    if not (TWEET_IMAGES / "102.jpg").is_file():
        pytest.skip(f"real tweet images not found at {TWEET_IMAGES} (set BFCL_SHARED_DATA to run this test)")
    blind = Predictor.load(checkpoint(tmp_path / "blind", 0), device="cpu")
    app = create_app(blind, limits=ServeLimits(max_image_bytes=50_000))
    with running(app) as url, chromium() as driver:
        driver.get(url)
        notice = driver.find_element("id", "notice")
        wait_for(driver, lambda d: notice.is_displayed(), "the notice")
        assert "trained without images" in notice.text
        driver.find_element("id", "text").send_keys(TWEET)
        # Drop the picture on the drop zone (a synthetic drop event carrying the real file).
        photo = TWEET_IMAGES / "102.jpg"  # 68 KB
        driver.execute_script(
            """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], arguments[1], {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));""",
            base64.b64encode(photo.read_bytes()).decode(), photo.name,
        )
        assert driver.find_element("id", "image-name").text.startswith("102.jpg")
        assert driver.execute_script("return document.getElementById('image').files[0].size") == photo.stat().st_size
        driver.find_element("id", "submit").click()
        error = driver.find_element("id", "error")
        wait_for(driver, lambda d: error.is_displayed(), "the 413 message")
        assert "HTTP 413" in error.text and "50000" in error.text, error.text
        driver.find_element("id", "clear-image").click()
        driver.find_element("id", "submit").click()
        wait_for(driver, lambda d: d.find_element("id", "results").get_attribute("data-runs") == "1", "the text-only answer")
        assert not driver.find_element("id", "error").is_displayed()
        assert not driver.find_element("id", "look").is_displayed()  # no picture, no map
