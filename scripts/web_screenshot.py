"""Screenshot of the web chat page with a real model: serve it on 127.0.0.1, chat in headless Chromium, save a PNG.

Usage: .venv/bin/python scripts/web_screenshot.py [--model smollm2-135m-instruct|CKPT] [--out docs/img/web-chat.png]

Needs Debian's chromium (scripts/install_chromium.sh) and the playwright package (no browser download).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
MESSAGES = [
    "My grandmother passed away last night. She raised me and I don't know what to do with myself.",
    "Can you review my plan: I'll quit my job tomorrow and sell handmade candles full time.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint folder or base alias")
    parser.add_argument("--out", default="docs/img/web-chat.png", help="PNG to write")
    parser.add_argument("--max-tokens", type=int, default=60, help="reply length of each message")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = parser.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from personafuse.loading import load_model
    from personafuse.serve import HFEngine, ServeSettings, create_app

    pf = load_model(args.model, device="cpu")
    settings = ServeSettings(model=args.model)
    app = create_app(HFEngine(pf, settings.served_name), settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model-status').textContent.startsWith('model ')")
            page.fill("#max-tokens", str(args.max_tokens))
            page.check("#compare")
            for index, message in enumerate(MESSAGES):
                page.fill("#message", message)
                page.press("#message", "Enter")
                page.wait_for_function(
                    f"document.querySelectorAll('.turn').length === {index + 1} && "
                    "[...document.querySelectorAll('.turn:last-child .reply')]"
                    ".every(r => r.getAttribute('aria-busy') === 'false')"
                )
            page.evaluate("document.getElementById('log').scrollTop = 0")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
