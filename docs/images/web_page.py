"""Make docs/images/web-page.png: the page of ``bfcl serve`` on a probe post where the picture decides the type.

    bfcl demo --output runs/demo          # trains the probe model once (minutes on a CPU)
    python docs/images/web_page.py --model runs/demo/best --output docs/images/web-page.png

It regenerates the demo's probe test split (same seed), serves the model on 127.0.0.1,
drives headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through selenium)
to type the post, upload its picture and select the name the picture decides, and saves
a screenshot. It stops with an error, and writes nothing, unless the model types that
name correctly with the picture and differently from the text alone: the screenshot has
to show the picture deciding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint directory (bfcl demo --output DIR: DIR/best)")
    ap.add_argument("--output", type=Path, default=Path("docs/images/web-page.png"))
    ap.add_argument("--sample", default="test-0007", help="probe test sample id (default: a dog decides MISC)")
    ap.add_argument("--seed", type=int, default=0, help="probe seed the model was trained with")
    ap.add_argument("--width", type=int, default=1100, help="browser window width in CSS pixels")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args(argv)

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from bfcl.demo.probe import make_probe
    from bfcl.inference.predictor import Predictor
    from bfcl.serving.app import create_app

    probe = make_probe(None, seed=args.seed, n_train=0, n_dev=0, n_test=300)
    sample = next((s for s in probe.test if s.id == args.sample), None)
    if sample is None:
        ap.error(f"no probe test sample {args.sample!r}")
    text = " ".join(sample.tokens)
    decided = [e for e in sample.meta["entities"] if e["decided_by"] == "image"]
    if not decided:
        ap.error(f"{args.sample}: no name in it is decided by the picture ({sample.meta['kind']})")
    target = decided[0]

    predictor = Predictor.load(args.model, device="cpu")
    with_image = {e.text: e.type for e in predictor.predict(text, probe.image(sample.image_id)).entities}
    text_only = {e.text: e.type for e in predictor.predict(text).entities}
    print(f"{args.sample}: {text!r}; {target['text']} is {target['type']} (a {sample.meta['image_class']} picture)")
    print(f"  with the picture: {with_image}; text alone: {text_only}")
    if with_image.get(target["text"]) != target["type"] or text_only.get(target["text"]) == target["type"]:
        print("error: on this post the picture does not decide the model's answer; pick another --sample", file=sys.stderr)
        return 1

    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"

    with tempfile.TemporaryDirectory(prefix="bfcl-shot-") as tmp:
        picture = Path(tmp) / f"{sample.image_id}.png"
        probe.image(sample.image_id).save(picture)
        options = webdriver.ChromeOptions()
        options.binary_location = args.chromium
        for flag in (*CHROMIUM_FLAGS, f"--window-size={args.width},1000", f"--user-data-dir={tmp}/profile"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(args.chromedriver))
        try:
            wait = WebDriverWait(driver, 120, poll_frequency=0.1)
            driver.get(url)
            wait.until(lambda d: "Model:" in d.find_element("id", "model-info").text)
            driver.find_element("id", "text").send_keys(text)
            driver.find_element("id", "image").send_keys(str(picture))
            driver.find_element("id", "submit").click()
            wait.until(lambda d: d.find_element("id", "results").get_attribute("data-runs") == "1")
            for el in driver.find_elements("css selector", "#with-image button.ent"):
                if el.find_element("css selector", ".ent-text").text == target["text"]:
                    el.click()
                    break
            else:
                raise RuntimeError(f"{target['text']!r} is not highlighted on the page")
            driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            print("  caption:", driver.find_element("id", "heat-caption").text)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(args.width, height + 140)  # + browser chrome, headless or not
            time.sleep(0.3)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.output))
        finally:
            driver.quit()
            server.should_exit = True
            thread.join(10)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
