"""The web chat page in real headless Chromium (Debian's `chromium`, driven by playwright) over a real server.

A uvicorn server on 127.0.0.1 serves `create_app` over the tiny PersonaFuse; the browser types a message, sends it
with Enter, and the test checks that the bars drawn for the reply carry the values of the API's `persona` field,
that "compare with base" shows the base reply beside the routed one, and that persona overrides and API errors
show inline. Skipped, with the reason, when Chromium or playwright is missing (`scripts/install_chromium.sh`).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from personafuse.traits import POLES, TRAITS

CHROMIUM = os.environ.get("PERSONAFUSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TIMEOUT_MS = 60_000

try:
    import playwright.sync_api  # noqa: F401

    _PLAYWRIGHT = True
except ImportError:
    _PLAYWRIGHT = False

pytestmark = [
    pytest.mark.skipif(
        not _PLAYWRIGHT, reason="playwright is not installed (pip install playwright; no browser download needed)"
    ),  # fmt: skip
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM}; run scripts/install_chromium.sh"
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def server_url(tiny_base):
    from personafuse.serve import ServeSettings, create_app
    from serve_support import make_engine, running_server, shared_tiny_pf

    pf = shared_tiny_pf(tiny_base)
    app = create_app(make_engine(pf), ServeSettings(model=tiny_base, model_name="tiny"))
    with running_server(app) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('model-status').textContent.startsWith('model ')")
    page.fill("#max-tokens", "6")
    yield page
    context.close()
    assert not [e for e in errors if "status of 400" not in e], f"JavaScript errors on the page: {errors}"


def _is_chat(response) -> bool:
    return response.url.endswith("/v1/chat/completions") and response.request.method == "POST"


def _send(page, text: str, count: int = 1) -> list[dict]:
    """Type ``text``, press Enter, return the bodies of the ``count`` chat responses (routed first)."""
    responses = []
    page.on("response", lambda r: responses.append(r) if _is_chat(r) else None)
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.wait_for_function(
        f"document.querySelectorAll('.turn').length > 0 && "
        f"[...document.querySelectorAll('.turn:last-child .reply')].length === {count} && "
        f"[...document.querySelectorAll('.turn:last-child .reply')].every(r => r.getAttribute('aria-busy') === 'false')"
    )
    page.wait_for_function("!document.getElementById('send').disabled")
    for _ in range(100):  # the page has drawn the replies; the driver may still be delivering the events
        if len(responses) >= count:
            break
        page.wait_for_timeout(50)
    exchanges = [
        {"request": json.loads(r.request.post_data), "response": r.json(), "status": r.status} for r in responses
    ]
    assert len(exchanges) == count, exchanges
    return sorted(exchanges, key=lambda e: e["request"].get("persona") == "off")  # routed first, base second


def _bars(page, card: str, attribute: str) -> dict[str, dict[str, float]]:
    """{name: {value, fraction}} of the bars in ``card``: the data value and the drawn fill's share of its track."""
    return page.eval_on_selector_all(
        f".turn:last-child {card} [{attribute}]",
        f"""rows => Object.fromEntries(rows.map(row => {{
            const track = row.querySelector('.track').getBoundingClientRect();
            const fill = row.querySelector('.fill').getBoundingClientRect();
            return [row.getAttribute('{attribute}'), {{
                value: Number(row.dataset.value),
                now: Number(row.querySelector('[role=meter]').getAttribute('aria-valuenow')),
                fraction: fill.width / track.width,
                right: fill.left >= track.left + track.width / 2 - 1,
            }}];
        }}))""",
    )


def test_send_with_enter_shows_reply_and_bars_matching_the_api(page):
    page.fill("#message", "first line")
    page.press("#message", "Shift+Enter")  # a new line, not a send
    assert page.input_value("#message") == "first line\n" and page.locator(".turn").count() == 0
    [exchange] = _send(page, "My grandmother passed away last night and I can't stop crying.")
    body = exchange["response"]
    assert exchange["status"] == 200 and "persona" not in exchange["request"], "automatic routing sends no persona"
    reply = page.inner_text(".turn:last-child .reply.routed .reply-text")
    assert reply == (body["choices"][0]["message"]["content"] or "(empty reply)")
    persona = body["persona"]
    activations = _bars(page, ".reply.routed", "data-trait")
    assert list(activations) == list(TRAITS)
    for trait, bar in activations.items():
        assert bar["value"] == pytest.approx(persona["activations"][trait], abs=1e-6)
        assert bar["now"] == pytest.approx(persona["activations"][trait], abs=1e-6)
        assert bar["fraction"] == pytest.approx(abs(persona["activations"][trait]) / 2, abs=0.02)  # half a track = 1
        if abs(persona["activations"][trait]) > 0.05:
            assert bar["right"] == (persona["activations"][trait] > 0), f"{trait} drawn on the wrong side"
    gates = _bars(page, ".reply.routed", "data-pole")
    assert list(gates) == list(POLES)
    for pole, bar in gates.items():
        assert bar["value"] == pytest.approx(persona["gates"][pole], abs=1e-6)
        assert bar["fraction"] == pytest.approx(persona["gates"][pole], abs=0.02)
    assert sum(bar["value"] for bar in gates.values()) == pytest.approx(1.0, abs=1e-3)
    assert page.evaluate("document.activeElement.id") == "message", "focus returns to the message box"


def test_compare_with_base_shows_both_replies_and_keeps_the_history(page, tmp_path):
    page.check("#compare")
    first = _send(page, "We just won the national championship!!", count=2)
    routed, base = first
    assert "persona" not in routed["request"] and base["request"]["persona"] == "off"
    assert routed["request"]["messages"] == base["request"]["messages"]
    base_text = page.inner_text(".turn:last-child .reply.base .reply-text")
    assert base_text == (base["response"]["choices"][0]["message"]["content"] or "(empty reply)")
    assert "experts off" in page.inner_text(".turn:last-child .reply.base .reply-title")
    assert page.locator(".turn:last-child .reply.base [data-pole]").count() == 0
    assert page.locator(".turn:last-child .reply.routed [data-pole]").count() == len(POLES)
    boxes = [page.locator(f".turn:last-child .reply.{kind}").bounding_box() for kind in ("routed", "base")]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] + 1, "base reply sits beside the routed one"
    second = _send(page, "What should we do to celebrate?", count=2)
    messages = second[0]["request"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == routed["response"]["choices"][0]["message"]["content"]
    page.screenshot(path=str(tmp_path / "web-chat-tiny.png"), full_page=True)
    assert (tmp_path / "web-chat-tiny.png").stat().st_size > 10_000


def test_fixed_mix_override_and_inline_errors(page):
    page.check("#mode-mix")
    page.fill("#mix", "A+=0.7, N-=0.3")
    [exchange] = _send(page, "hello there")
    assert exchange["request"]["persona"] == {"A+": 0.7, "N-": 0.3}
    gates = _bars(page, ".reply.routed", "data-pole")
    assert gates["A+"]["value"] == pytest.approx(0.7) and gates["N-"]["value"] == pytest.approx(0.3)
    assert gates["O+"]["value"] == 0 and gates["O+"]["fraction"] == pytest.approx(0.0, abs=0.01)
    assert "fixed mix" in page.inner_text(".turn:last-child .reply-title")
    assert "none" in page.inner_text(".turn:last-child .activations")

    page.fill("#mix", "Q+=1")  # the server refuses it: its 400 message is shown in the reply's place
    [refused] = _send(page, "hello again")
    assert refused["status"] == 400
    alert = page.inner_text(".turn:last-child .reply.routed [role=alert]")
    assert refused["response"]["error"]["message"] in alert and "unknown pole" in alert

    page.fill("#mix", "A+0.7")  # caught in the page before any request
    page.fill("#message", "and again")
    page.press("#message", "Enter")
    page.wait_for_selector(".turn:last-child .reply.routed [role=alert]")
    assert "is not POLE=WEIGHT" in page.inner_text(".turn:last-child .reply.routed [role=alert]")


def test_page_controls_have_labels_and_static_assets_load(page, server_url):
    unlabeled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea, button')].filter(e => {
            if (e.tagName === 'BUTTON') return !e.textContent.trim() && !e.getAttribute('aria-label');
            return !(e.labels && e.labels.length) && !e.getAttribute('aria-label');
        }).map(e => e.id || e.outerHTML)"""
    )
    assert unlabeled == []
    assert page.get_attribute("#log", "role") == "log"
    page.check("#mode-preset")
    assert page.is_enabled("#preset") and not page.is_enabled("#mix")
    assert page.locator("#preset option").count() >= 1
    page.keyboard.press("Tab")  # keyboard reachable
    assert page.evaluate("document.activeElement.tagName") != "BODY"
