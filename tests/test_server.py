"""The HTTP API against a real uvicorn server on 127.0.0.1, spoken to with httpx.

One tiny random-weight model (real EfficientNet-Lite0 image path) is loaded once per
module; a second app with tight limits serves the same Predictor, so limits can be hit
with small payloads.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import typer
import uvicorn
from PIL import Image
from typer.testing import CliRunner

import bfcl
from bfcl.data.images import DEFAULT_MAX_PIXELS
from bfcl.inference.predictor import Predictor
from bfcl.serving import app as serving
from bfcl.serving.app import ServeLimits, create_app
from helpers import LABELS, running, tiny_model

HOST = "127.0.0.1"
TEXT = "Grace Hopper visits New York with IBM and the Navy"
TIGHT = ServeLimits(max_body_bytes=8_000, max_image_bytes=2_000, max_pixels=10_000, max_text_chars=50, max_batch_items=3)


def _photo() -> bytes:
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


def _png(size: int, noise: bool) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if noise else np.full((size, size, 3), 90, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")




def client(url: str) -> httpx.Client:
    # trust_env=False: no proxy from the environment; we only ever talk to 127.0.0.1.
    return httpx.Client(base_url=url, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("serve")
    tiny_model(image_dim=1280).save_pretrained(root / "ckpt")
    app = create_app(root / "ckpt", feature_cache=root / "features")
    with running(app) as url, client(url) as http:
        yield SimpleNamespace(url=url, app=app, http=http, ckpt=root / "ckpt")


@pytest.fixture(scope="module")
def tight(srv) -> Iterator[httpx.Client]:
    with running(create_app(srv.app.state.predictor, limits=TIGHT)) as url, client(url) as http:
        yield http


def assert_error(resp: httpx.Response, status: int, *needles: str) -> str:
    """Status, a ``{"detail": str}`` body naming the problem, and no traceback text."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    for needle in needles:
        assert needle.lower() in body["detail"].lower(), body
    for leak in ("Traceback", 'File "', "site-packages", ".py\", line"):
        assert leak not in resp.text
    return body["detail"]


def check_prediction(pred: dict[str, Any], text: str) -> None:
    assert pred["text"] == text
    assert len(pred["tokens"]) == len(pred["labels"])
    assert set(pred["labels"]) <= set(LABELS)
    for ent in pred["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]
        assert ent["type"] in {"PER", "LOC", "ORG", "MISC"}
        assert 0.0 <= ent["score"] <= 1.0


# --------------------------------------------------------------------------- happy paths


def test_health_and_info(srv):
    assert srv.http.get("/health").json() == {"status": "ok"}
    info = srv.http.get("/info").json()
    assert info["labels"] == LABELS
    assert info["text_encoder"] == "minilm" and info["image_encoder"] == "efficientnet-lite0"
    assert info["uses_image"] is True
    assert info["version"] == bfcl.__version__ == info["checkpoint_version"]
    assert info["config"]["image_dim"] == 1280 and info["config"]["labels"] == LABELS
    assert info["limits"]["max_text_chars"] == ServeLimits().max_text_chars
    assert info["limits"]["max_pixels"] == DEFAULT_MAX_PIXELS


def test_predict_json_with_and_without_image(srv):
    photo = _photo()
    plain = srv.http.post("/predict", json={"text": TEXT}).json()
    with_image = srv.http.post("/predict", json={"text": TEXT, "image": b64(photo)}).json()
    check_prediction(plain, TEXT)
    check_prediction(with_image, TEXT)
    assert plain["has_image"] is False and with_image["has_image"] is True
    assert plain["tokens"] == with_image["tokens"] == TEXT.split()
    # Same answer as the library itself (the image went through the predictor's cache).
    assert with_image == srv.app.state.predictor.predict(TEXT, image=photo).to_dict()
    # Null image, a data URL and line-wrapped base64 are accepted.
    assert srv.http.post("/predict", json={"text": TEXT, "image": None}).json() == plain
    data_url = "data:image/jpeg;base64," + b64(photo)
    assert srv.http.post("/predict", json={"text": TEXT, "image": data_url}).json() == with_image
    wrapped = base64.encodebytes(photo).decode("ascii")
    assert srv.http.post("/predict", json={"text": TEXT, "image": wrapped}).json() == with_image


def test_offsets_are_character_offsets(srv):
    texts = [
        "  Ünïcödé   Grace Hopper 😀 in New   York , IBM !!",
        "RT @nasa : Kolo Touré back at #Arsenal http://t.co/x",
        "",
        "   ",
    ]
    preds = [srv.http.post("/predict", json={"text": t}).json() for t in texts]
    for t, p in zip(texts, preds):
        check_prediction(p, t)
    assert any(p["entities"] for p in preds), "the tiny model should tag something to check offsets on"
    assert preds[2]["tokens"] == preds[2]["entities"] == []


def test_predict_multipart(srv):
    photo = _photo()
    by_json = srv.http.post("/predict", json={"text": TEXT, "image": b64(photo)}).json()
    resp = srv.http.post("/predict", data={"text": TEXT}, files={"image": ("gh.jpg", photo, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    assert resp.json() == by_json
    text_only = srv.http.post("/predict", data={"text": TEXT}, files={"unused": ("x", b"")})
    assert_error(text_only, 422, "unused")
    no_file = srv.http.post("/predict", data={"text": TEXT}, files={"image": ("", b"", "application/octet-stream")})
    assert no_file.json()["has_image"] is False  # a browser form with no file chosen


def test_upload_route_parses_the_form(srv):
    """POST /predict/upload is the form route; /predict hands a form on to it (compatibility)."""
    photo = _photo()
    by_json = srv.http.post("/predict", json={"text": TEXT, "image": b64(photo)}).json()
    upload = srv.http.post("/predict/upload", data={"text": TEXT}, files={"image": ("gh.jpg", photo, "image/jpeg")})
    assert upload.status_code == 200, upload.text
    assert upload.json() == by_json
    assert srv.http.post("/predict/upload", data={"text": TEXT, "image": b64(photo)}).json() == by_json
    assert srv.http.post("/predict/upload", data={"text": TEXT}).json()["has_image"] is False
    post = srv.http.post
    assert_error(post("/predict/upload", json={"text": TEXT}), 415, "application/json", "multipart/form-data")
    assert_error(post("/predict/batch", data={"text": TEXT}), 415, "send application/json")
    assert_error(post("/predict/upload", data={"text": [TEXT, TEXT]}), 422, "at most once", "text")
    assert_error(post("/predict/upload", data={"text": TEXT}, files={"image": ("e.jpg", b"", "image/jpeg")}), 422, "empty")
    doc = srv.http.get("/openapi.json").json()
    assert set(doc["paths"]["/predict/upload"]["post"]["requestBody"]["content"]) == {"multipart/form-data"}
    assert doc["components"]["schemas"]["UploadForm"]["required"] == ["text"]
    assert doc["components"]["schemas"]["BatchRequest"]["properties"]["items"]["maxItems"] == ServeLimits().max_batch_items


def test_batch(srv):
    photo = _photo()
    items = [{"text": TEXT, "image": b64(photo)}, {"text": "Kolo back home in London"}, {"text": ""}]
    resp = srv.http.post("/predict/batch", json={"items": items})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["text"] for p in preds] == [it["text"] for it in items]
    assert [p["has_image"] for p in preds] == [True, False, False]
    for it, p in zip(items, preds):
        check_prediction(p, it["text"])
        assert p == srv.http.post("/predict", json=it).json()
    assert srv.http.post("/predict/batch", json={"items": []}).json() == {"predictions": []}


def test_openapi_documents_both_request_bodies(srv):
    doc = srv.http.get("/openapi.json").json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    schemas = doc["components"]["schemas"]
    assert {"PredictRequest", "BatchRequest", "PredictionOut", "BatchResponse", "InfoOut", "ErrorOut"} <= set(schemas)
    assert schemas["PredictRequest"]["required"] == ["text"]

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert srv.http.get("/docs").status_code == 200


# --------------------------------------------------------------------------- refusals


def test_malformed_requests_are_422(srv):
    post = srv.http.post
    headers = {"content-type": "application/json"}
    assert_error(post("/predict", content=b'{"text": ', headers=headers), 422, "malformed JSON")
    assert_error(post("/predict", content=b"\xff\xfe\x00garbage", headers=headers), 422, "malformed JSON")
    assert_error(post("/predict", content=b"", headers=headers), 422, "empty body")
    assert_error(post("/predict", content=b"[" * 100_000, headers=headers), 422, "nested too deeply")
    assert_error(post("/predict", json=["text"]), 422, "JSON object")
    assert_error(post("/predict", json={}), 422, "text", "required")
    assert_error(post("/predict", json={"image": b64(_photo())}), 422, "text", "required")
    assert_error(post("/predict", json={"text": 3}), 422, "text", "string")
    assert_error(post("/predict", json={"text": "x", "img": "..."}), 422, "img")
    assert_error(post("/predict", content=b'{"text": "\\ud800"}', headers=headers), 422, "surrogate")
    assert_error(post("/predict", data={}, files={"image": ("a.jpg", _photo())}), 422, "text", "missing")
    assert_error(post("/predict", files={"text": ("t.txt", b"hello")}), 422, "text", "not a file")
    assert_error(post("/predict", content=b"x", headers={"content-type": "multipart/form-data"}), 422, "boundary")
    assert_error(post("/predict", content=b"Kolo", headers={"content-type": "text/plain"}), 415, "text/plain")
    assert_error(post("/predict/batch", json={"items": [{"image": None}]}), 422, "items[0].text")
    assert_error(post("/predict/batch", json={"posts": []}), 422, "items")
    assert_error(srv.http.get("/nope"), 404)


def test_bad_images_are_422(srv):
    post = srv.http.post
    photo = _photo()
    assert_error(post("/predict", json={"text": TEXT, "image": "!!!not base64!!!"}), 422, "image", "base64")
    assert_error(post("/predict", json={"text": TEXT, "image": ""}), 422, "image", "empty")
    assert_error(post("/predict", json={"text": TEXT, "image": "data:image/png,abc"}), 422, "data URL")
    not_image = b64(b"plain text, not a picture at all")
    assert_error(post("/predict", json={"text": TEXT, "image": not_image}), 422, "not a readable image")
    eps = b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    assert_error(post("/predict", json={"text": TEXT, "image": eps}), 422, "not a readable image")
    files = {"image": ("x.jpg", b"\x00" * 100, "image/jpeg")}
    assert_error(post("/predict", data={"text": TEXT}, files=files), 422, "not a readable image")
    # A readable header over broken pixel data fails only when decoded: still 422, named.
    truncated = b64(photo[: len(photo) // 3])
    assert_error(post("/predict", json={"text": TEXT, "image": truncated}), 422, "image could not be decoded")
    items = [{"text": "fine", "image": b64(photo)}, {"text": "broken", "image": truncated}]
    assert_error(post("/predict/batch", json={"items": items}), 422, "items[1].image")
    assert srv.http.post("/predict", json={"text": TEXT, "image": b64(photo)}).status_code == 200


def test_text_and_batch_limits_default(srv):
    limit = ServeLimits().max_text_chars
    assert_error(srv.http.post("/predict", json={"text": "a" * (limit + 1)}), 422, str(limit))
    too_many = {"items": [{"text": "x"}] * (ServeLimits().max_batch_items + 1)}
    assert_error(srv.http.post("/predict/batch", json=too_many), 422, "items", str(ServeLimits().max_batch_items))


def test_size_limits(tight):
    noisy = _png(40, noise=True)
    assert TIGHT.max_image_bytes < len(noisy) < TIGHT.max_body_bytes * 3 // 4 - 100
    assert_error(tight.post("/predict", json={"text": "x", "image": b64(noisy)}), 413, "image", str(TIGHT.max_image_bytes))
    files = {"image": ("n.png", noisy, "image/png")}
    assert_error(tight.post("/predict", data={"text": "x"}, files=files), 413, "image", str(TIGHT.max_image_bytes))

    wide = _png(200, noise=False)  # few bytes, many pixels
    assert len(wide) < TIGHT.max_image_bytes
    assert_error(tight.post("/predict", json={"text": "x", "image": b64(wide)}), 413, "pixels", str(TIGHT.max_pixels))
    small = _png(20, noise=False)
    assert tight.post("/predict", json={"text": "x", "image": b64(small)}).json()["has_image"] is True

    assert_error(tight.post("/predict", json={"text": "a" * 51}), 422, "51 characters")
    assert tight.post("/predict", json={"text": "a" * 50}).status_code == 200
    items = [{"text": "x"}] * 4
    assert_error(tight.post("/predict/batch", json={"items": items}), 422, "items", "3")

    big = json.dumps({"text": "a" * 9_000}).encode()
    assert_error(tight.post("/predict", content=big, headers={"content-type": "application/json"}), 413, "body")

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b" " * 1_000

    resp = tight.post("/predict", content=chunked(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "body")
    multipart_big = tight.post("/predict", data={"text": "x"}, files={"image": ("n.png", b"\x89PNG" + b"0" * 9_000)})
    assert_error(multipart_big, 413, "body")
    assert tight.get("/health").status_code == 200


def test_unexpected_error_is_500_without_details(srv, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals /srv/model")

    monkeypatch.setattr(srv.app.state.predictor, "predict_batch", boom)
    with caplog.at_level(logging.ERROR, logger="bfcl.serving"):
        resp = srv.http.post("/predict", json={"text": TEXT})
    assert assert_error(resp, 500) == "internal error"
    assert "secret" not in resp.text
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records if r.name == "bfcl.serving")


# --------------------------------------------------------------------------- concurrency


def test_concurrent_requests_match_sequential(srv):
    photo = b64(_photo())
    payloads = [
        {"text": TEXT, "image": photo},
        {"text": "Kolo Touré is back home in Abidjan"},
        {"text": "RT @IBM : Hopper day at Yale", "image": photo},
    ]
    expected = [srv.http.post("/predict", json=p).json() for p in payloads]

    def worker(k: int) -> list[tuple[int, dict]]:
        with client(srv.url) as http:
            out = []
            for j in range(3):
                idx = (k + j) % len(payloads)
                resp = http.post("/predict", json=payloads[idx])
                assert resp.status_code == 200, resp.text
                out.append((idx, resp.json()))
            return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for chunk in pool.map(worker, range(8)) for r in chunk]
    assert len(results) == 24
    for idx, got in results:
        assert got == expected[idx]


def test_event_loop_stays_responsive_while_model_busy(srv):
    lock = srv.app.state.model_lock
    assert lock is serving.model_lock(srv.app.state.predictor)
    done = threading.Event()
    result: dict[str, Any] = {}

    def call() -> None:
        with client(srv.url) as http:
            result["resp"] = http.post("/predict", json={"text": TEXT})
        done.set()

    with lock:  # the model is "busy"
        t = threading.Thread(target=call)
        t.start()
        with client(srv.url) as http:
            assert http.get("/health", timeout=5).json() == {"status": "ok"}
            assert_error(http.post("/predict", json={}, timeout=5), 422, "text")
        assert not done.wait(0.3), "predict must wait for the model lock"
    t.join(30)
    assert result["resp"].status_code == 200


# --------------------------------------------------------------------------- config and CLI


def test_limits_validation(srv):
    with pytest.raises(ValueError, match="max_text_chars"):
        ServeLimits(max_text_chars=0)
    with pytest.raises(ValueError, match="max_pixels"):
        ServeLimits(max_pixels=DEFAULT_MAX_PIXELS + 1)
    with pytest.raises(ValueError, match="image_formats"):
        ServeLimits(image_formats=("NOPE",))
    with pytest.raises(TypeError, match="feature_cache"):
        create_app(srv.app.state.predictor, feature_cache="/tmp/x")
    assert isinstance(srv.app.state.predictor, Predictor)


def _cli() -> typer.Typer:
    from bfcl.cli.serve import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Group, so the sub-command keeps its name."""

    register(app)
    return app


def test_cli_help_quotes_the_real_defaults():
    cmd = typer.main.get_command(_cli()).commands["serve"]
    helps = {p.name: p.help or "" for p in cmd.params}
    defaults = ServeLimits()
    for name in ("max_text_chars", "max_image_bytes", "max_body_bytes", "max_pixels", "max_batch_items"):
        assert f"[default: {getattr(defaults, name)}]" in helps[name], name


def test_cli_help_and_description_name_the_page_and_not_a_label_set(srv):
    r = CliRunner().invoke(_cli(), ["serve", "--help"], terminal_width=200)
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "web page at /" in text and "POST /explain" in text
    assert "PER/LOC" not in srv.app.description and "types the model was trained on" in srv.app.description


def test_cli_serve_passes_options(srv, monkeypatch):
    calls: dict[str, Any] = {}

    def fake_create_app(model, *, limits, feature_cache, device):
        calls.update(model=model, limits=limits, feature_cache=feature_cache, device=device)
        return "APP"

    monkeypatch.setattr(serving, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    args = ["serve", "--model", str(srv.ckpt), "--port", "0", "--max-text-chars", "77", "--max-image-bytes", "1234"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert calls["app"] == "APP" and calls["host"] == HOST and calls["port"] == 0
    assert calls["limits"] == ServeLimits(max_text_chars=77, max_image_bytes=1234)
    bad = CliRunner().invoke(_cli(), ["serve", "--model", str(srv.ckpt / "missing")])
    assert bad.exit_code != 0
