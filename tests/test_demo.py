"""The demo end to end with the real packaged encoders (MiniLM + EfficientNet-Lite0)."""

from __future__ import annotations

import json

import pytest

from bfcl.demo.run import format_report, run_demo, write_json


@pytest.mark.integration
def test_small_demo_image_decides_what_text_cannot(tmp_path):
    report = run_demo(tmp_path / "out", seed=3, epochs=3, n_train=200, n_dev=40, n_test=80, work_dir=tmp_path / "work")
    b, t = report["bfcl"], report["text_only"]
    # only the picture tells the type of an ambiguous name: BFCL reads it, text alone cannot
    assert b["image-decided"]["f1"] > t["image-decided"]["f1"] + 0.25
    assert b["f1"] > t["f1"]
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()
    write_json(report, tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved) >= {"bfcl", "text_only", "seconds"}
    assert set(saved["bfcl"]) >= {"precision", "recall", "f1"}
    assert "image-decided" in format_report(report)

    import bfcl

    model = bfcl.load(tmp_path / "out" / "best")
    probe_img = sorted((tmp_path / "work" / "probe" / "images").glob("test_*.png"))[0]
    pred = model.predict("Just saw Kolo again today", image=probe_img)
    assert pred.has_image and len(pred.labels) == 5
