"""``bfcl demo``: BFCL against a text-only encoder + CRF on the multimodal probe.

The probe (``bfcl.demo.probe``) has posts where only the picture tells an
ambiguous name's type, and posts whose text decides it while the picture is
unrelated. Both models use the same text encoder and training budget; the table
shows what the image adds, and what it must not cost.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bfcl.demo.probe import ProbeSettings, probe_settings
from bfcl.model.configuration import BFCLConfig
from bfcl.training.config import TrainConfig

KINDS = ("image-decided", "text-decided")


def demo_configs(seed: int = 0, epochs: int = 4) -> tuple[BFCLConfig, BFCLConfig, TrainConfig]:
    """The offline BFCL setting, its text-only twin, and their shared training budget."""
    bfcl_cfg = BFCLConfig(
        text_encoder="minilm", image_encoder="efficientnet-lite0", d_model=128, num_heads=8,
        num_layers=4, num_bottlenecks=4, fusion_stage="mid", lambda_vt=0.1, lambda_tv=0.1,
    )
    text_cfg = BFCLConfig(text_encoder="minilm", multimodal=False, decoder="crf")
    tc = TrainConfig(
        epochs=epochs, batch_size=16, lr=5e-5, head_lr=1e-3, seed=seed, map_other_to_misc=False,
        image_extensions=[".png"], progress=False, warmup_ratio=0.1,
    )
    return bfcl_cfg, text_cfg, tc


def run_demo(
    output: Path | None = None,
    *,
    seed: int = 0,
    epochs: int = 4,
    n_train: int | None = None,
    n_dev: int = 150,
    n_test: int = 300,
    work_dir: Path | None = None,
    difficulty: str | ProbeSettings = "easy",
) -> dict[str, Any]:
    """Both models on the probe of ``difficulty`` ("easy", "hard" or ``ProbeSettings``); ``n_train``
    None takes the difficulty's training size."""
    from bfcl.demo.probe import make_probe
    from bfcl.inference.predictor import Predictor
    from bfcl.metrics import entity_scores
    from bfcl.training.trainer import train

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bfcl-demo-") as tmp:
        root = Path(work_dir or tmp)
        probe_dir = root / "probe"
        probe = make_probe(probe_dir, seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test, difficulty=difficulty)
        bfcl_cfg, text_cfg, tc = demo_configs(seed, epochs)
        common = replace(tc, data_dir=str(probe_dir), images_dir=str(probe_dir / "images"), feature_cache=str(root / "features"))
        bfcl_out = Path(output) if output else root / "bfcl"
        train(bfcl_cfg, replace(common, output_dir=str(bfcl_out)), command="bfcl demo")
        train(text_cfg, replace(common, output_dir=str(root / "text_only")), command="bfcl demo")

        report: dict[str, Any] = {"probe": probe_description(difficulty, len(probe.train))}
        gold = [s.labels for s in probe.test]
        for name, ckpt in (("bfcl", bfcl_out / "best"), ("text_only", root / "text_only" / "best")):
            pred = Predictor.load(ckpt, feature_cache=root / "features").label_samples(
                probe.test, images_dir=probe_dir / "images", image_extensions=(".png",)
            )
            overall = entity_scores(gold, pred)
            entry = {k: overall[k] for k in ("precision", "recall", "f1")}
            for kind in KINDS:
                idx = [i for i, s in enumerate(probe.test) if s.meta.get("kind") == kind]
                sub = entity_scores([gold[i] for i in idx], [pred[i] for i in idx])
                entry[kind] = {k: sub[k] for k in ("precision", "recall", "f1")}
            report[name] = entry
        if output:
            report["checkpoint"] = str(bfcl_out / "best")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def probe_description(difficulty: str | ProbeSettings, n_train: int) -> dict[str, Any]:
    """The probe's preset name ("custom" for other settings), its settings and training size, for the report."""
    from dataclasses import asdict

    from bfcl.demo.probe import DIFFICULTIES

    settings = probe_settings(difficulty)
    name = next((k for k, v in DIFFICULTIES.items() if v == settings), "custom")
    return {"difficulty": name, "n_train": n_train, "settings": asdict(settings)}


def format_report(report: dict[str, Any]) -> str:
    rows = [f"{'model':<10} {'subset':<14} {'P':>7} {'R':>7} {'F1':>7}"]
    for name in ("bfcl", "text_only"):
        r = report[name]
        rows.append(f"{name:<10} {'all':<14} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f}")
        for kind in KINDS:
            s = r[kind]
            rows.append(f"{'':<10} {kind:<14} {s['precision']:7.4f} {s['recall']:7.4f} {s['f1']:7.4f}")
    probe = report.get("probe")
    where = f"{probe['difficulty']} probe, {probe['n_train']} training posts; " if probe else ""
    rows.append(f"({where}{report['seconds']} s)")
    return "\n".join(rows)


def write_json(report: dict[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
