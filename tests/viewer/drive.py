#!/usr/bin/env python3
"""Drives the echovault web viewer in headless Chromium (Selenium) against a running
`echovault serve` on a phantom index, and checks what a person would see.

    python tests/viewer/drive.py --base http://127.0.0.1:PORT --phantoms DIR --screens DIR \
        [--scenario NAME ...] [--measure N] [--missing-id ID --missing-study STUDY] \
        [--token T --ingest-path DIR]

Scenarios (run in the order given; each saves <screens>/<scenario>.png and prints one JSON line
with its findings; the first failed check saves <screens>/<scenario>-FAILED.png, prints the
page text and the browser console, and exits 1):
  device    a device phrase: >= 8 results, the first 8 thumbnails really play (their sprite's
            background position moves), the top 5 are pacemaker videos per the phantom truth,
            the URL keeps the query
  drop      a phantom video chosen as the file of #video-file: its own study first
  study     the study page of the drop's first hit: report text, readings, its videos, the
            patient timeline (one point per dated study), more like this
  keyboard  Tab from the top reaches every result in order; Enter on one opens its study
  missing   (--missing-id/--missing-study; the caller moved that source away) the placeholder
            and "Source file not found" for that video, the study's other videos play
  ingest    (--token/--ingest-path) an ingest job from the ingest page runs to done; a bad path
            shows an error
  tablet    820x1180: no horizontal scrollbar, results visible
  phi       no phantom source path and no raw patient id in the text of a search and a study page
--measure N: instead of the checks, loads the device search N times and prints the time from
navigation start to the first playing thumbnail (#results[data-first-playing-ms]).

The phantom truth is DIR/manifest.jsonl (one line per video: file, study, patient, devices...).
"""

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - the Rust test checks this before it runs us
    sys.exit(f"selenium is not installed ({e}): run tools/setup (installs chromium, chromium-driver and selenium)")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEVICE_QUERY = "A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART."
ALL_SCENARIOS = ["missing", "device", "drop", "study", "keyboard", "tablet", "phi", "ingest"]


class Failed(Exception):
    """A failed check: its message says what was expected and what the page showed."""


# ---------------------------------------------------------------------------------------------
# The phantom truth and the server's API (plain urllib: no browser involved)


def load_manifest(phantoms):
    path = os.path.join(phantoms, "manifest.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(l) for l in f if l.strip()]
    if not rows:
        raise Failed(f"{path} is empty")
    return rows


class Api:
    def __init__(self, base, token=None):
        self.base = base.rstrip("/")
        self.token = token

    def get(self, path, auth=False):
        req = urllib.request.Request(self.base + path)
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            raise Failed(f"GET {path}: HTTP {e.code}: {body[:500]}") from None

    # Records carry source paths only for the admin token (the server runs without --show-paths).
    def item(self, item_id):
        return self.get("/v1/items/" + urllib.parse.quote(item_id, safe=""), auth=True)

    def study(self, study):
        return self.get("/v1/studies/" + urllib.parse.quote(study, safe=""), auth=True)

    def patient(self, key):
        return self.get("/v1/patients/" + urllib.parse.quote(key, safe=""))


def truth_of(manifest, source, study):
    """The manifest line of a video: by its source path (ends with the manifest's relative file),
    else by its study (every video of a phantom study shares the study's truth)."""
    src = (source or "").replace("\\", "/")
    for row in manifest:
        if src.endswith("/" + row["file"]) or src == row["file"]:
            return row
    for row in manifest:
        if study is not None and row["study"] == study:
            return row
    return None


# ---------------------------------------------------------------------------------------------
# The browser


class Browser:
    def __init__(self, args):
        self.args = args
        self.console = []
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                  "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]:
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.set_viewport(1280, 800)
        self.d.set_page_load_timeout(60)
        self.d.set_script_timeout(30)
        self.scenario = "start"

    def quit(self):
        try:
            self.d.quit()
        except Exception:  # noqa: BLE001 - the browser may be gone already
            pass

    # -- helpers --------------------------------------------------------------------------

    def set_viewport(self, width, height):
        """Makes the page's viewport (not the window, which adds the browser's own bars even
        headless) width x height CSS pixels."""
        self.d.set_window_size(width, height)
        inner = self.d.execute_script("return [window.innerWidth, window.innerHeight]")
        if inner != [width, height]:
            self.d.set_window_size(2 * width - inner[0], 2 * height - inner[1])

    def url(self, path):
        return self.args.base.rstrip("/") + path

    def open(self, path):
        self.d.get(self.url(path))

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def log(self):
        """The browser console since the last call, kept for the failure report."""
        try:
            entries = self.d.get_log("browser")
        except WebDriverException:
            entries = []
        self.console.extend(entries)
        return entries

    def text(self, css=None):
        if css is None:
            return self.js("return document.body ? document.body.innerText : ''") or ""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)

    def screenshot(self, name):
        os.makedirs(self.args.screens, exist_ok=True)
        path = os.path.join(self.args.screens, f"{name}.png")
        try:
            self.d.save_screenshot(path)
        except WebDriverException as e:
            print(f"[drive] screenshot {path} failed: {e}", file=sys.stderr)
        return path

    def screenshot_full(self, name):
        """The whole page, not only the viewport: the viewport made as tall as the document."""
        w, h, vh = self.js("return [window.innerWidth, document.documentElement.scrollHeight, window.innerHeight]")
        try:
            self.set_viewport(w, min(max(h, vh), 6000))
            time.sleep(0.3)
            return self.screenshot(name)
        finally:
            self.set_viewport(w, vh)

    def state_excerpt(self):
        """What the page shows now, for a failure message."""
        try:
            url = self.d.current_url
            body = self.text()
            error = self.text("#error")
            status = self.text("#status")
        except WebDriverException as e:
            return f"(page unreadable: {e})"
        self.log()
        console = "\n".join(f"  {c.get('level')}: {c.get('message')}" for c in self.console[-40:])
        return (f"url: {url}\n#status: {status!r}\n#error: {error!r}\n"
                f"page text (first 2000 chars):\n{body[:2000]}\nbrowser console (last 40):\n{console or '  (empty)'}")

    def fail(self, message):
        raise Failed(message)

    def wait(self, cond, timeout, what):
        """Waits until cond() is truthy; fails naming `what` otherwise (a string, or a callable
        that describes the page's state when the wait failed)."""
        last = [None]

        def probe(_):
            try:
                v = cond()
            except (WebDriverException, Failed) as e:
                last[0] = e
                return False
            return v

        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(probe)
        except TimeoutException:
            extra = f" (last error: {last[0]})" if last[0] else ""
            if callable(what):
                try:
                    what = what()
                except (WebDriverException, Failed) as e:
                    what = f"(description failed: {e})"
            self.fail(f"timed out after {timeout} s waiting for {what}{extra}")

    def wait_results(self, timeout=90, min_results=1):
        """Waits for a search's rendered results: #results[data-done="1"] with >= min_results."""
        self.wait(lambda: self.js(
            "const r = document.querySelector('#results');"
            "return !!r && r.dataset.done === '1' && r.querySelectorAll('a.result').length >= arguments[0];",
            min_results), timeout, f'#results[data-done="1"] with at least {min_results} a.result')
        return self.results()

    def results(self, scope="#results"):
        return self.js("""
            return Array.from(document.querySelectorAll(arguments[0] + ' a.result')).map(a => ({
                id: a.dataset.id, study: a.dataset.study, kind: a.dataset.kind,
                rank: a.dataset.rank, score: a.dataset.score, href: a.getAttribute('href'),
                state: (a.querySelector('.cine') || {dataset: {}}).dataset.state || null}));""", scope)

    def cine_states(self, ids, scope="#results"):
        return self.js("""
            const out = {};
            for (const a of document.querySelectorAll(arguments[1] + ' a.result')) {
                if (arguments[0].includes(a.dataset.id)) {
                    const c = a.querySelector('.cine'); out[a.dataset.id] = c ? c.dataset.state : null;
                }
            }
            return out;""", ids, scope)

    def sprite_samples(self, cines):
        """Per .cine: the computed background-position-x and background-image of the element
        that shows its sprite (the .cine itself, else the descendant or ::before/::after pseudo
        element with the blob: image)."""
        return self.js("""
            return arguments[0].map(cine => {
                for (const e of [cine, ...cine.querySelectorAll('*')]) {
                    for (const pseudo of [null, '::before', '::after']) {
                        const cs = getComputedStyle(e, pseudo);
                        if (cs.backgroundImage && cs.backgroundImage.includes('blob:'))
                            return {x: cs.backgroundPositionX, img: cs.backgroundImage,
                                    on: (e === cine ? '.cine' : e.tagName.toLowerCase() + '.' + e.className) + (pseudo || '')};
                    }
                }
                const cs = getComputedStyle(cine);
                return {x: cs.backgroundPositionX, img: cs.backgroundImage, on: '.cine'};
            });""", cines)

    def check_csp(self):
        bad = [c["message"] for c in self.log() + self.console if "Content Security Policy" in c.get("message", "")]
        if bad:
            self.fail("the page broke its Content Security Policy (inline script/style?):\n" + "\n".join(sorted(set(bad))[:10]))


# ---------------------------------------------------------------------------------------------
# Scenarios


def device_path(query):
    return "/?q=" + urllib.parse.quote(query, safe="")


def scenario_device(b, ctx):
    args, api, manifest = b.args, ctx["api"], ctx["manifest"]
    b.open(device_path(args.query))
    t0 = time.monotonic()
    hits = b.wait_results(min_results=1)
    if len(hits) < 8:
        b.fail(f"the device search shows {len(hits)} results, want >= 8: {hits}")
    if any(h["kind"] != "video" for h in hits):
        b.fail(f"a video search shows non-video results: {[h['kind'] for h in hits]}")
    ranks = [int(h["rank"]) for h in hits]
    if ranks != list(range(1, len(hits) + 1)):
        b.fail(f"data-rank is not 1..N in grid order: {ranks}")
    missing = args.missing_id
    shown = [h for h in hits if h["id"] != missing]
    first8 = [h["id"] for h in shown[:8]]
    b.wait(lambda: all(s == "playing" for s in b.cine_states(first8).values()) and len(b.cine_states(first8)) == 8,
           10, lambda: f"the first 8 thumbnails to reach data-state=playing (now {b.cine_states(first8)})")
    play_s = time.monotonic() - t0
    cines = [b.d.find_element(By.CSS_SELECTOR, f'#results a.result[data-rank="{h["rank"]}"] .cine') for h in shown[:8]]
    first = b.sprite_samples(cines)
    time.sleep(0.3)
    second = b.sprite_samples(cines)
    moved = sum(1 for a, c in zip(first, second) if a["x"] != c["x"])
    blobs = sum(1 for s in second if s["img"].startswith('url("blob:') or s["img"].startswith("url(blob:"))
    if blobs < 8:
        b.fail(f"the playing thumbnails' background-image must be blob: URLs, got {[s['img'][:60] for s in second]}")
    if moved < 6:
        b.fail(f"only {moved} of 8 'playing' thumbnails moved in 300 ms (background-position-x "
               f"{[a['x'] for a in first]} -> {[c['x'] for c in second]})")
    # Precision@5 against the truth.
    top = []
    for h in hits[:5]:
        rec = api.item(h["id"])
        t = truth_of(manifest, rec.get("source"), rec.get("study"))
        if t is None:
            b.fail(f"hit {h['id']} (source {rec.get('source')!r}, study {rec.get('study')!r}) is in no manifest line")
        if rec.get("study") != h["study"]:
            b.fail(f"hit {h['id']}: data-study {h['study']!r} but the item's study is {rec.get('study')!r}")
        top.append({"id": h["id"], "file": t["file"], "devices": t["devices"], "pacemaker": "pacemaker" in t["devices"]})
    n_pacer = sum(1 for r in manifest if "pacemaker" in r["devices"])
    allowed = min(5, n_pacer) / 5
    need = min(0.8, allowed)
    precision = sum(r["pacemaker"] for r in top) / 5
    if precision + 1e-9 < need:
        b.fail(f"precision@5 for a pacemaker is {precision:.2f}, want >= {need:.2f} "
               f"({n_pacer} pacemaker videos in the truth): {top}")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(b.d.current_url).query).get("q")
    if q != [args.query]:
        b.fail(f"the URL does not keep the query: {b.d.current_url} (q={q})")
    b.check_csp()
    b.screenshot("device")
    if missing and any(h["id"] == missing for h in hits):
        # Cards off screen load their thumbnail when scrolled near: bring it into view.
        b.js("""for (const a of document.querySelectorAll('#results a.result'))
                    if (a.dataset.id === arguments[0]) a.scrollIntoView({block: 'center'});""", missing)
        b.wait(lambda: b.cine_states([missing]).get(missing) == "missing", 15,
               lambda: f"the moved source's thumbnail in the grid to reach data-state=missing (now {b.cine_states([missing])})")
        b.js("window.scrollTo(0, 0)")
    return {"results": len(hits), "playing_within_s": round(play_s, 2), "moved_of_8": moved, "sprite_on": second[0]["on"],
            "precision_at_5": precision, "precision_allowed": allowed, "pacemaker_videos": n_pacer,
            "top5": top, "status": b.text("#status"), "url": b.d.current_url}


def drop_video(ctx, formats=("dicom-jpeg", "dicom-native")):
    """The phantom video to drop: one of `formats` (DICOM by default: its study id is a UID) of a
    patient with the most studies, not of the study whose source was moved away."""
    manifest, args = ctx["manifest"], ctx["args"]
    per_patient = {}
    for r in manifest:
        per_patient.setdefault(r["patient"], set()).add(r["study"])
    cands = [r for r in manifest if r["study"] != args.missing_study]
    picked = [r for r in cands if r.get("format") in formats] or cands
    picked.sort(key=lambda r: (-len(per_patient[r["patient"]]), r["file"]))
    return picked[0]


def drop_one(b, row):
    """Chooses the phantom file of `row` in #video-file on a fresh search page: its own study
    must come first. The results."""
    path = os.path.abspath(os.path.join(b.args.phantoms, row["file"]))
    if not os.path.isfile(path):
        b.fail(f"the phantom video {path} does not exist")
    b.open("/")
    b.wait(lambda: b.js("return document.body.dataset.page") == "search", 30, "body[data-page=search]")
    if not b.d.find_elements(By.CSS_SELECTOR, "#drop"):
        b.fail("no #drop zone on the search page")
    inp = b.d.find_element(By.CSS_SELECTOR, "#drop input#video-file")
    if inp.get_attribute("type") != "file":
        b.fail(f"input#video-file is type={inp.get_attribute('type')!r}, want file")
    inp.send_keys(path)
    hits = b.wait_results(timeout=120, min_results=1)
    if hits[0]["study"] != row["study"]:
        b.fail(f"dropping {row['file']} (study {row['study']}): the first result's study is "
               f"{hits[0]['study']!r}, want its own; results: {hits[:5]}")
    b.wait(lambda: b.cine_states([hits[0]["id"]]).get(hits[0]["id"]) == "playing", 15,
           lambda: f"the first result's thumbnail to play (now {b.cine_states([hits[0]['id']])})")
    b.check_csp()
    return hits


def scenario_drop(b, ctx):
    found = {}
    # An AVI (FFmpeg), then a DICOM cine: the study page scenario opens the DICOM one's study.
    for kind, formats in (("avi", ("avi",)), ("dicom", ("dicom-jpeg", "dicom-native"))):
        row = drop_video(ctx, formats)
        hits = drop_one(b, row)
        b.screenshot("drop" if kind == "dicom" else f"drop-{kind}")
        found[kind] = {"file": row["file"], "format": row.get("format"), "study": row["study"], "first": hits[0],
                       "results": len(hits), "status": b.text("#status")}
    ctx["study"] = found["dicom"]["first"]["study"]
    return found


def open_study(b, study):
    b.open("/study/" + urllib.parse.quote(study, safe=""))
    b.wait(lambda: b.js("return document.body.dataset.page") == "study", 30, "body[data-page=study]")


def scenario_study(b, ctx):
    api = ctx["api"]
    study = ctx.get("study") or drop_video(ctx)["study"]
    open_study(b, study)
    rec = api.study(study)
    items = rec["items"]
    videos = [i for i in items if i["kind"] == "video"]
    reports = [i for i in items if i["kind"] == "report"]
    srec = next((i for i in items if i["kind"] == "study"), None)
    title = b.wait(lambda: b.text("#study-title"), 30, "h1#study-title text")
    if study not in title:
        b.fail(f"#study-title {title!r} does not name the study {study!r}")
    # Report.
    want = " ".join((reports[0]["text"] if reports else "No report in the index for this study").split())
    b.wait(lambda: " ".join((b.text("#report-text") or "").split()) == want, 30,
           lambda: f"#report-text to be the study's report {want!r} (now {b.text('#report-text')!r})")
    # Videos.
    count_cines = "return document.querySelectorAll('#study-videos figure.video .cine').length"
    b.wait(lambda: b.js(count_cines) == len(videos), 30,
           lambda: f"{len(videos)} figure.video .cine in #study-videos (now {b.js(count_cines)})")
    n_cine = b.js("return document.querySelectorAll('#study-videos .cine').length")
    if n_cine != len(videos):
        b.fail(f"#study-videos shows {n_cine} .cine, the study has {len(videos)} videos")
    fig_ids = sorted(b.js("return Array.from(document.querySelectorAll('#study-videos figure.video')).map(f => f.dataset.id)"))
    if fig_ids != sorted(v["id"] for v in videos):
        b.fail(f"figure.video data-id {fig_ids} != the study's videos {sorted(v['id'] for v in videos)}")
    b.js("document.querySelector('#study-videos').scrollIntoView({block: 'start'})")
    states = "return Array.from(document.querySelectorAll('#study-videos .cine')).map(c => c.dataset.state)"
    b.wait(lambda: all(s == "playing" for s in b.js(states)), 15,
           lambda: f"every video of the study to play (now {b.js(states)})")
    # Readings.
    b.wait(lambda: b.js("""return Array.from(document.querySelectorAll('#readings .reading'))
                           .some(r => (r.querySelector('.value') || {}).textContent && r.querySelector('.value').textContent.trim())"""),
           60, "#readings with a .reading whose .value is not empty")
    readings = b.js("""return Array.from(document.querySelectorAll('#readings .reading')).map(r => ({
        task: r.dataset.task, value: ((r.querySelector('.value') || {}).textContent || '').trim(),
        fill: (r.querySelector('.bar > .fill') || {style: {}}).style.width || null}));""")
    # Timeline.
    key = (srec or videos[0]).get("patient")
    if not key:
        b.fail(f"the study {study} has no patient key in the index: {srec}")
    tl = api.patient(key)
    dated = [s["study"] for s in tl["studies"]]
    if len(dated) < 2:
        b.fail(f"the patient of study {study} has {len(dated)} dated studies, the test needs >= 2: {tl}")
    count_points = "return document.querySelectorAll('#timeline svg circle.point').length"
    b.wait(lambda: b.js(count_points) == len(dated), 30,
           lambda: f"{len(dated)} circle.point in #timeline svg, one per dated study of the patient (now {b.js(count_points)})")
    points = b.js("""return Array.from(document.querySelectorAll('#timeline svg circle.point')).map(c => {
        const a = c.closest('a');
        const href = a ? (a.getAttribute('href') || a.getAttribute('xlink:href') || '') : null;
        return {study: c.dataset.study || c.getAttribute('data-study'), date: c.getAttribute('data-date'),
                flagged: c.getAttribute('data-flagged'), current: c.classList.contains('current'), href: href};
    });""")
    for p in points:
        if not p["href"] or not p["href"].startswith("/study/"):
            b.fail(f"a timeline point is not inside an <a href=/study/...>: {p}")
    if sorted(p["study"] for p in points) != sorted(dated):
        b.fail(f"the timeline's points {sorted(p['study'] for p in points)} != the patient's dated studies {sorted(dated)}")
    current = [p for p in points if p["current"]]
    if len(current) != 1 or current[0]["study"] != study:
        b.fail(f"want exactly one circle.point.current, for {study}: {current}")
    # More like this.
    b.wait(lambda: b.js("return document.querySelectorAll('#more-like a.result').length") >= 1, 60,
           "#more-like with at least one a.result")
    more = b.results("#more-like")
    own = {v["id"] for v in videos}
    if any(m["id"] in own for m in more):
        b.fail(f"#more-like shows the study's own videos: {more}")
    b.check_csp()
    b.js("window.scrollTo(0, 0)")
    b.screenshot("study")
    b.screenshot_full("study-full")
    return {"study": study, "title": title, "videos": len(videos), "readings": readings,
            "timeline_points": len(points), "patient_studies": len(dated), "more_like": len(more),
            "reid": b.js("return document.querySelectorAll('#reid a.result').length")}


def scenario_keyboard(b, ctx):
    b.open(device_path(b.args.query))
    hits = b.wait_results(min_results=1)
    want = [h["id"] for h in hits]
    b.js("if (document.activeElement) document.activeElement.blur(); window.scrollTo(0, 0);")
    seen, order, trail = set(), [], []
    focus_style = None
    for _ in range(200):
        ActionChains(b.d).send_keys(Keys.TAB).perform()
        now = b.js("""const a = document.activeElement;
            if (!a) return {tag: null};
            const r = a.closest ? a.closest('a.result') : null;
            const cs = getComputedStyle(a);
            return {tag: a.tagName, id: a.id || null, result: r ? r.dataset.id : null, self: r === a,
                    outline: cs.outlineStyle + ' ' + cs.outlineWidth, shadow: cs.boxShadow};""")
        trail.append(now.get("result") or f"{now.get('tag')}#{now.get('id')}")
        rid = now.get("result")
        if rid and rid not in seen:
            seen.add(rid)
            order.append(rid)
            if focus_style is None:
                focus_style = now
        if seen >= set(want):
            break
    if set(want) - seen:
        b.fail(f"Tab reached {len(seen)} of {len(want)} results in 200 presses; focus trail: {trail[:60]}")
    if order != want:
        b.fail(f"results got focus out of grid order: {order} vs {want}")
    if focus_style and focus_style["outline"].startswith("none") and focus_style["shadow"] in ("none", ""):
        b.fail(f"a focused result shows no visible focus (outline {focus_style['outline']}, box-shadow {focus_style['shadow']})")
    b.screenshot("keyboard")
    focused = b.js("const r = document.activeElement.closest('a.result'); return r ? r.getAttribute('href') : null")
    if not focused:
        b.fail("focus is not on a result before Enter")
    ActionChains(b.d).send_keys(Keys.ENTER).perform()
    b.wait(lambda: urllib.parse.urlparse(b.d.current_url).path.startswith("/study/"), 20,
           f"Enter on a focused result to open /study/... (href {focused})")
    b.wait(lambda: b.js("return document.body.dataset.page") == "study", 30, "the study page after Enter")
    path = urllib.parse.urlparse(b.d.current_url).path
    if path != urllib.parse.urlparse(focused).path:
        b.fail(f"Enter opened {path}, the focused result links {focused}")
    b.check_csp()
    return {"results": len(want), "tabs": len(trail), "focus_outline": focus_style and focus_style["outline"],
            "opened": path}


def scenario_missing(b, ctx):
    args = b.args
    if not args.missing_id or not args.missing_study:
        b.fail("the missing scenario needs --missing-id and --missing-study")
    rec = ctx["api"].study(args.missing_study)
    videos = [i["id"] for i in rec["items"] if i["kind"] == "video"]
    if args.missing_id not in videos:
        b.fail(f"{args.missing_id} is not a video of study {args.missing_study}: {videos}")
    open_study(b, args.missing_study)
    b.wait(lambda: b.js("return document.querySelectorAll('#study-videos figure.video').length") >= 1, 30,
           "figure.video in #study-videos")
    b.js("document.querySelector('#study-videos').scrollIntoView({block: 'start'})")
    fig_state = """const f = Array.from(document.querySelectorAll('#study-videos figure.video')).find(f => f.dataset.id === arguments[0]);
                   if (!f) return null; const c = f.querySelector('.cine'); return c ? c.dataset.state : 'no .cine';"""
    b.wait(lambda: b.js(fig_state, args.missing_id) == "missing", 30,
           lambda: f"figure.video[data-id={args.missing_id}] .cine to reach data-state=missing (now {b.js(fig_state, args.missing_id)!r})")
    fig = b.js("""const f = Array.from(document.querySelectorAll('#study-videos figure.video')).find(f => f.dataset.id === arguments[0]);
        const imgs = Array.from(f.querySelectorAll('img')).map(i => i.currentSrc || i.src);
        const bgs = [f, ...f.querySelectorAll('*')].map(e => getComputedStyle(e).backgroundImage).filter(s => s && s !== 'none');
        return {text: f.innerText, imgs: imgs, bgs: bgs};""", args.missing_id)
    if "Source file not found" not in fig["text"]:
        b.fail(f"the missing video's figure does not show 'Source file not found': {fig['text']!r}")
    captions = b.d.find_elements(By.XPATH, f"//figure[@data-id='{args.missing_id}']//*[contains(text(), 'Source file not found')]")
    if not any(c.is_displayed() for c in captions):
        b.fail(f"the 'Source file not found' caption is not visible ({len(captions)} elements hold it)")
    if not any("placeholder.svg" in s for s in fig["imgs"] + fig["bgs"]):
        b.fail(f"the missing video shows no /assets/placeholder.svg (img {fig['imgs']}, backgrounds {fig['bgs']})")
    others = [v for v in videos if v != args.missing_id]
    if not others:
        b.fail(f"study {args.missing_study} has no other video to play")
    others_state = """return Array.from(document.querySelectorAll('#study-videos figure.video'))
        .filter(f => f.dataset.id !== arguments[0]).map(f => (f.querySelector('.cine') || {dataset: {}}).dataset.state);"""
    b.wait(lambda: (lambda s: len(s) == len(others) and all(x == "playing" for x in s))(b.js(others_state, args.missing_id)),
           15, lambda: f"the study's other videos to play (now {b.js(others_state, args.missing_id)})")
    b.check_csp()
    b.js("window.scrollTo(0, 0)")
    b.screenshot("missing")
    return {"study": args.missing_study, "missing": args.missing_id, "others_playing": len(others),
            "placeholder": [s for s in fig["imgs"] + fig["bgs"] if "placeholder.svg" in s][:1]}


def scenario_ingest(b, ctx):
    args, api = b.args, ctx["api"]
    if not args.token or not args.ingest_path:
        b.fail("the ingest scenario needs --token and --ingest-path")
    before = {j["id"] for j in api.get("/v1/ingest", auth=True).get("jobs", [])}
    b.open("/ingest")
    b.wait(lambda: b.js("return document.body.dataset.page") == "ingest", 30, "body[data-page=ingest]")
    tok = b.d.find_element(By.CSS_SELECTOR, "input#token")
    if tok.get_attribute("type") != "password":
        b.fail(f"input#token is type={tok.get_attribute('type')!r}, want password")
    tok.clear()
    tok.send_keys(args.token)
    path = b.d.find_element(By.CSS_SELECTOR, "input#ingest-path")
    path.clear()
    path.send_keys(os.path.abspath(args.ingest_path))
    b.d.find_element(By.CSS_SELECTOR, "button#ingest-start").click()
    b.wait(lambda: (b.text("#job-state") or "").strip().lower() in ("done", "failed", "interrupted"), 120,
           lambda: f"#job-state to say done (now {b.text('#job-state')!r})")
    state = b.text("#job-state").strip().lower()
    if state != "done":
        b.fail(f"the ingest job ended {state!r}; #job-errors: {b.text('#job-errors')!r}")
    b.wait(lambda: b.js("const p = document.querySelector('progress#job-progress'); return !!p && p.max > 0 && p.value === p.max"),
           10, "progress#job-progress at its max")
    prog = b.js("const p = document.querySelector('progress#job-progress'); return [p.value, p.max]")
    jobs = [j for j in api.get("/v1/ingest", auth=True).get("jobs", []) if j["id"] not in before]
    if len(jobs) != 1:
        b.fail(f"want one new ingest job on the server, got {jobs}")
    job = jobs[0]
    if job["state"] != "done" or job["progress"]["ingested"] < 1:
        b.fail(f"the server's job is not a done job that ingested videos: {job}")
    jid = str(job["id"])
    b.wait(lambda: re.search(r"(?<!\d)" + jid + r"(?!\d)", b.text("#jobs") or "") is not None, 15,
           lambda: f"#jobs to list job {jid} (now {b.text('#jobs')!r})")
    b.screenshot("ingest")
    # A path the server does not have: an error, never a silent nothing.
    bad = "/nonexistent/echovault-viewer-test"
    path.clear()
    path.send_keys(bad)
    b.d.find_element(By.CSS_SELECTOR, "button#ingest-start").click()
    b.wait(lambda: (b.text("#error") or "").strip() or (b.text("#job-state") or "").strip().lower() == "failed", 20,
           "an error in #error (or a failed job) for a path that does not exist")
    err = (b.text("#error") or "").strip()
    if err and not b.d.find_element(By.CSS_SELECTOR, "#error").is_displayed():
        b.fail(f"#error holds {err!r} but is not visible")
    if err and "does not exist" not in err:
        b.fail(f"#error for a missing path says {err!r}, want the API's message ('... does not exist on the server')")
    b.check_csp()
    b.screenshot("ingest-error")
    return {"job": job["id"], "progress": prog, "ingested": job["progress"]["ingested"],
            "bad_path_error": err or None, "bad_path_state": b.text("#job-state")}


def scenario_tablet(b, ctx):
    b.set_viewport(820, 1180)
    try:
        b.open(device_path(b.args.query))
        hits = b.wait_results(min_results=1)
        b.wait(lambda: (b.cine_states([hits[0]["id"]]).get(hits[0]["id"]) == "playing"), 15, "the first thumbnail to play")
        m = b.js("""const d = document.documentElement;
            const r = document.querySelector('#results a.result').getBoundingClientRect();
            return {scroll: d.scrollWidth, client: d.clientWidth, inner: window.innerWidth,
                    first: {left: r.left, right: r.right, width: r.width, height: r.height},
                    cols: new Set(Array.from(document.querySelectorAll('#results a.result')).slice(0, 12)
                          .map(a => Math.round(a.getBoundingClientRect().left))).size};""")
        if m["scroll"] > m["client"]:
            b.fail(f"a horizontal scrollbar at 820x1180: scrollWidth {m['scroll']} > clientWidth {m['client']}")
        first = b.d.find_element(By.CSS_SELECTOR, "#results a.result")
        if not first.is_displayed() or m["first"]["width"] <= 0 or m["first"]["right"] > m["client"] + 0.5 or m["first"]["left"] < 0:
            b.fail(f"the first result is not visible within the page width: {m}")
        b.check_csp()
        b.screenshot("tablet")
        return {"scroll_width": m["scroll"], "client_width": m["client"], "columns": m["cols"], "results": len(hits)}
    finally:
        b.set_viewport(1280, 800)


def phi_leaks(text, phantoms, patients):
    """Raw patient ids and the phantom directory in `text`. A patient id followed by -S<n> is a
    phantom AVI file's name, which is its study id (echovault takes an AVI's name as its study
    id): reported apart, not a leak of the viewer's making."""
    leaks, study_ids = [], set()
    if phantoms in text:
        leaks.append(phantoms)
    for p in patients:
        for m in re.finditer(re.escape(p) + r"(-S\d+)?", text):
            if m.group(1):
                study_ids.add(m.group(0))
            else:
                leaks.append(p)
    return sorted(set(leaks)), sorted(study_ids)


def scenario_phi(b, ctx):
    args, api, manifest = b.args, ctx["api"], ctx["manifest"]
    viewer = api.get("/v1/viewer")
    if viewer.get("show_paths"):
        b.fail(f"the server shows paths (/v1/viewer {viewer}); run it without --show-paths")
    phantoms = os.path.abspath(args.phantoms)
    patients = sorted({r["patient"] for r in manifest})
    out = {}
    b.open(device_path(args.query))
    hits = b.wait_results(min_results=1)
    b.wait(lambda: b.cine_states([hits[0]["id"]]).get(hits[0]["id"]) == "playing", 15, "the first thumbnail to play")
    if b.d.find_elements(By.CSS_SELECTOR, ".source"):
        b.fail("the search page shows .source paths without --show-paths")
    text = b.text()
    leaks, sids = phi_leaks(text, phantoms, patients)
    if leaks:
        b.fail(f"the search page shows {leaks}")
    out["search"] = {"chars": len(text), "avi_study_ids_shown": sids}
    study = ctx.get("study") or drop_video(ctx)["study"]
    open_study(b, study)
    b.wait(lambda: (b.text("#report-text") or "").strip(), 30, "#report-text")
    b.wait(lambda: b.js("return document.querySelectorAll('#timeline svg circle.point').length") >= 1, 30, "the timeline")
    b.wait(lambda: b.js("return document.querySelectorAll('#more-like a.result').length") >= 1, 60, "#more-like")
    time.sleep(1.0)  # reid and readings may still be filling in
    if b.d.find_elements(By.CSS_SELECTOR, ".source"):
        b.fail("the study page shows .source paths without --show-paths")
    text = b.text()
    leaks, sids = phi_leaks(text, phantoms, patients)
    if leaks:
        b.fail(f"the study page {study} shows {leaks}")
    out["study"] = {"study": study, "chars": len(text), "avi_study_ids_shown": sids}
    b.screenshot("phi")
    # What the page's browser receives, not only what it shows: the API answers the viewer
    # reads carry no source path without the token (the page would not show one, but a
    # user's browser would still hold it).
    for method, path, body in [
        ("POST", "/v1/search", json.dumps({"text": args.query, "k": 24}).encode()),
        ("GET", "/v1/studies/" + urllib.parse.quote(study, safe=""), None),
    ]:
        req = urllib.request.Request(api.base + path, data=body, method=method, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read().decode("utf-8")
        if '"source"' in raw or phantoms in raw:
            b.fail(f"{method} {path} without the token answers source paths: {raw[:300]}")
    out["api_without_paths"] = True
    return out


SCENARIOS = {
    "device": scenario_device,
    "drop": scenario_drop,
    "study": scenario_study,
    "keyboard": scenario_keyboard,
    "missing": scenario_missing,
    "ingest": scenario_ingest,
    "tablet": scenario_tablet,
    "phi": scenario_phi,
}


def measure(b, n):
    times = []
    for i in range(n):
        b.d.get("about:blank")
        b.open(device_path(b.args.query))
        ms = b.wait(lambda: b.js("const r = document.querySelector('#results');"
                                 "return r && r.dataset.firstPlayingMs ? r.dataset.firstPlayingMs : null"),
                    60, f"#results[data-first-playing-ms] (load {i + 1})")
        times.append(float(ms))
    return {"first_playing_ms": times, "median": statistics.median(times), "cold": times[0] if times else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--phantoms", required=True, help="the phantom directory (manifest.jsonl)")
    ap.add_argument("--screens", required=True, help="where the screenshots go")
    ap.add_argument("--scenario", nargs="+", action="extend", choices=sorted(SCENARIOS), help="scenarios, in order")
    ap.add_argument("--measure", type=int, default=0, metavar="N", help="time N loads of the device search instead")
    ap.add_argument("--query", default=DEVICE_QUERY, help="the device phrase")
    ap.add_argument("--missing-id", help="a video whose source the caller moved away")
    ap.add_argument("--missing-study", help="its study")
    ap.add_argument("--token", help="the server's admin token (ingest)")
    ap.add_argument("--ingest-path", help="a server-side directory to ingest from the ingest page")
    args = ap.parse_args()
    args.phantoms = os.path.abspath(args.phantoms)

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} is missing: run tools/setup (installs chromium, chromium-driver and selenium)")
    try:
        manifest = load_manifest(args.phantoms)
    except (OSError, Failed) as e:
        sys.exit(f"cannot read the phantom truth: {e}")
    scenarios = args.scenario or [s for s in ALL_SCENARIOS
                                  if (s != "missing" or args.missing_id) and (s != "ingest" or args.token)]
    ctx = {"args": args, "api": Api(args.base, args.token), "manifest": manifest}
    b = Browser(args)
    name = "start"
    try:
        if args.measure:
            name = "measure"
            print(json.dumps({"scenario": "measure", **measure(b, args.measure)}), flush=True)
            return 0
        for name in scenarios:
            b.scenario = name
            b.console = []
            t0 = time.monotonic()
            found = SCENARIOS[name](b, ctx)
            print(json.dumps({"scenario": name, "ok": True, "seconds": round(time.monotonic() - t0, 2), **found}),
                  flush=True)
        return 0
    except Failed as e:
        shot = b.screenshot(f"{name}-FAILED")
        detail = b.state_excerpt()
        print(json.dumps({"scenario": name, "ok": False, "error": str(e), "screenshot": shot}), flush=True)
        print(f"[drive] scenario {name} FAILED: {e}\n{detail}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a crash is a failure of the scenario too
        shot = b.screenshot(f"{name}-FAILED")
        detail = b.state_excerpt()
        print(json.dumps({"scenario": name, "ok": False, "error": f"{type(e).__name__}: {e}", "screenshot": shot}),
              flush=True)
        print(f"[drive] scenario {name} crashed:\n{traceback.format_exc()}\n{detail}", file=sys.stderr)
        return 1
    finally:
        b.quit()


if __name__ == "__main__":
    sys.exit(main())
