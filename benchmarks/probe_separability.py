"""Can frozen EfficientNet-Lite0 features tell the probe's drawn image classes apart?

BFCL on the demo probe only trains a small head over a frozen CNN, so the drawings must be
linearly separable in its features. This fits a logistic regression on mean-pooled 1280-d
features of probe train images and scores it on images of the probe's test split (drawn with
other random parameters). ``--difficulty hard`` does the same for the hard probe (small objects
among clutter and distractors): it should stay solvable, but less easily.

    .venv/bin/python benchmarks/probe_separability.py [--per-class 25] [--seed 0] [--difficulty hard]
"""

from __future__ import annotations

import argparse
import time

import torch

from bfcl.data.images import load_image
from bfcl.demo.probe import DIFFICULTIES, IMAGE_CLASSES, make_probe, probe_image_class
from bfcl.encoders.image import build_image_encoder


def pooled_features(encoder, images: list) -> torch.Tensor:
    """Mean of the 7x7 region features: (N, 1280)."""
    pixels = torch.stack([load_image(img) for img in images])
    return torch.cat([encoder(pixels[i : i + 32]).mean(dim=1) for i in range(0, len(pixels), 32)])


def pick(probe, split: str, classes: tuple[str, ...], per_class: int) -> tuple[list, list[int]]:
    """Up to ``per_class`` images of each class from one split, in sample order."""
    images, labels, seen = [], [], dict.fromkeys(classes, 0)
    for s in probe.split(split):
        c = probe_image_class(s)
        if c in seen and seen[c] < per_class:
            seen[c] += 1
            images.append(probe.image(s.image_id))
            labels.append(classes.index(c))
    return images, labels


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression (light L2) on standardised features, full-batch LBFGS."""
    clf = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(clf.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(clf(x), y) + 1e-3 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


def run(
    classes: tuple[str, ...], per_class_train: int, per_class_test: int, seed: int, encoder, difficulty: str = "easy"
) -> float:
    probe = make_probe(
        seed=seed, n_train=max(200, 10 * per_class_train), n_dev=0, n_test=max(200, 10 * per_class_test),
        difficulty=difficulty,
    )
    tr_img, tr_y = pick(probe, "train", classes, per_class_train)
    te_img, te_y = pick(probe, "test", classes, per_class_test)
    x_tr, x_te = pooled_features(encoder, tr_img), pooled_features(encoder, te_img)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    torch.manual_seed(seed)
    clf = fit_logreg(x_tr, torch.tensor(tr_y), len(classes))
    with torch.no_grad():
        pred = clf(x_te).argmax(1)
    y = torch.tensor(te_y)
    acc = (pred == y).float().mean().item()
    conf = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for t, p in zip(y.tolist(), pred.tolist()):
        conf[t, p] += 1
    print(f"classes={classes}  train={len(tr_y)}  test={len(te_y)}  test accuracy={acc:.4f}")
    print("confusion (rows gold, cols predicted):")
    for c, row in zip(classes, conf.tolist()):
        print(f"  {c:<9} {row}")
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=20, help="training images per class")
    ap.add_argument("--per-class-test", type=int, default=20, help="test images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="easy", help="probe preset")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    encoder = build_image_encoder("efficientnet-lite0")
    print(f"probe difficulty: {args.difficulty}")
    run(IMAGE_CLASSES[:4], args.per_class, args.per_class_test, args.seed, encoder, args.difficulty)
    run(IMAGE_CLASSES, args.per_class, args.per_class_test, args.seed, encoder, args.difficulty)
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
