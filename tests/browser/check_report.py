#!/usr/bin/env python3
"""Load a dnaflow report in headless Chromium and check what a reader would see.

    check_report.py PAGE --expect EXPECT.json [--screenshot OUT.png] [--live]

PAGE is a report file or a `dnaflow serve` URL. EXPECT.json holds
`{"steps": {name: status}, "metrics": [step/metric, ...], "expect": {"pass": n, "fail": n},
"text": [strings the page must show], "results": {step/metric: value}}`. Also checked: no
sideways scrolling at 1280 px, and the results section above the fold with the record's numbers. Checked: every step present with its status (in the
table and the DAG), every metric row, the expect results, every image decoded with a non-zero
size, no console error, and no request but the page itself (and, live, its own origin). With
--live the page must change from a running step to its end without being reloaded.
Prints a JSON summary; exits 1 with the reasons when a check fails, 2 when Chromium or
Playwright is missing (the caller prints that as a skip).
"""
import argparse
import json
import os
import shutil
import sys
import time
from urllib.parse import urlparse


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("page")
    ap.add_argument("--expect", required=True)
    ap.add_argument("--screenshot")
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed (pip install playwright)")
        sys.exit(2)
    exe = chromium_path()
    if not exe:
        print("no chromium on PATH (Debian: apt-get install chromium)")
        sys.exit(2)
    want = json.load(open(a.expect))
    url = a.page if "://" in a.page else "file://" + os.path.abspath(a.page)
    origin = urlparse(url)
    problems, console, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")

        if a.live:
            # The page must follow the run: a step shown running, then finished, same document.
            page.evaluate("window.__dnaflow_marker = 42")
            deadline = time.time() + a.timeout
            seen_running = seen_loss = False
            while time.time() < deadline:
                if page.locator("tr.step[data-status=running]").count() > 0:
                    seen_running = True
                if page.locator("svg.loss").count() > 0:
                    seen_loss = True
                if seen_running and page.locator("#run-status").inner_text() in ("ok", "failed"):
                    break
                time.sleep(0.25)
            if not seen_running:
                problems.append("no step was ever shown running")
            if want.get("live_loss") and not seen_loss:
                problems.append("the loss logged by a running step was never drawn")
            status = page.locator("#run-status").inner_text()
            if status not in ("ok", "failed"):
                problems.append(f"the page still says `{status}` after {a.timeout:.0f} s")
            if page.evaluate("window.__dnaflow_marker") != 42:
                problems.append("the page was reloaded instead of updated in place")
            time.sleep(1.5)  # one more poll: the final record

        for name, status in want.get("steps", {}).items():
            sel = f'tr.step[data-step="{name}"]'
            row = page.locator(sel)
            if row.count() != 1:
                problems.append(f"step `{name}`: {row.count()} rows in the table")
                continue
            got = row.get_attribute("data-status")
            if got != status:
                problems.append(f"step `{name}`: status `{got}`, expected `{status}`")
            # A foreach copy is drawn in its group's box, which lists it in `data-steps`.
            node = page.locator(
                f'svg.dag g.node[data-step="{name}"], svg.dag g.node[data-steps~="{name}"]'
            )
            if node.count() != 1 or node.get_attribute("data-status") != status:
                problems.append(f"step `{name}`: not drawn in the DAG as `{status}`")
        rows = set(page.eval_on_selector_all("#metrics tr[data-metric]", "rs => rs.map(r => r.dataset.metric)"))
        for m in want.get("metrics", []):
            if m not in rows:
                problems.append(f"metric `{m}` not in the metrics table")
        for outcome, n in want.get("expect", {}).items():
            got = page.locator(f"[data-expect={outcome}]").count()
            if got != n:
                problems.append(f"{got} expectations shown as {outcome}, expected {n}")
        images = page.eval_on_selector_all(
            "img", "is => is.map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}))")
        for i in images:
            if not (i["ok"] and i["w"] > 0 and i["h"] > 0):
                problems.append(f"image `{i['alt']}` did not decode ({i['w']}x{i['h']})")
        if want.get("min_images", 0) > len(images):
            problems.append(f"{len(images)} images, expected at least {want['min_images']}")
        # The page fits 1280 px: nothing scrolls sideways.
        wide = page.evaluate(
            "Math.max(document.documentElement.scrollWidth - window.innerWidth, "
            "...Array.from(document.querySelectorAll('.dagbox, #results, #metrics'))"
            ".map(e => e.scrollWidth - e.clientWidth))")
        if wide > 0:
            problems.append(f"the page scrolls sideways by {wide} px at 1280 px")
        # The results lead: above the fold, with the run record's numbers.
        results = want.get("results", {})
        if results:
            top = page.evaluate(
                "(() => { const r = document.querySelector('#results'); "
                "return r ? r.getBoundingClientRect().top : null })()")
            if top is None or top >= 900:
                problems.append(f"the results section is not above the fold (top {top})")
            shown = dict(page.eval_on_selector_all(
                "#results td[data-metric]", "ts => ts.map(t => [t.dataset.metric, t.dataset.value])"))
            for m, v in results.items():
                if m not in shown:
                    problems.append(f"result `{m}` not in the results section")
                elif abs(float(shown[m]) - float(v)) > 1e-12 * max(1.0, abs(float(v))):
                    problems.append(f"result `{m}`: page says {shown[m]}, the run record {v}")
        body = page.inner_text("body")
        for t in want.get("text", []):
            if t not in body:
                problems.append(f"the page does not show {t!r}")
        if page.locator("script:not([src])").count() > (1 if a.live else 0):
            problems.append("unexpected inline scripts (injected text?)")
        if a.screenshot:
            page.screenshot(path=a.screenshot, full_page=True)
        browser.close()
    for r in requests:
        u = urlparse(r)
        same = (u.scheme, u.netloc) == (origin.scheme, origin.netloc)
        if u.scheme == "data" or (same and (u.scheme != "file" or u.path == origin.path)):
            continue
        problems.append(f"a request left the page: {r}")
    problems += [f"console: {c}" for c in console]
    print(json.dumps({"images": len(images), "requests": len(requests), "problems": problems}, indent=1))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
