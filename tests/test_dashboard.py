"""What a person sees, in a real browser (Debian's Chromium, driven by Playwright): the study in
optuna-dashboard with autoprune's figures, live; and the self-contained report opened with the
network cut off."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from tests.conftest import REPO, run_cli
from tests.test_search import _answers, _free_port, search, wait_for, write_spec

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (Debian's chromium package)"
    ),
]

# Every plotly graph on the page: its title, the points in its data, its x axis' type, and how
# many marks (points, bars, lines) plotly drew.
GRAPHS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
  title: (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '',
  points: (el.data || []).reduce((n, t) => n + (t.x || []).length, 0),
  xtype: el._fullLayout && el._fullLayout.xaxis ? el._fullLayout.xaxis.type : null,
  drawn: el.querySelectorAll('.point, .bars path, .scatterlayer path.js-line').length}))"""
TITLES = {  # graph id -> how its title starts
    "summary": "Summary: the best within",
    "trade-off": "Compression against accuracy drop",
    "bytes": "Where the bytes went",
    "l1-norms": "Filter L1 norms per conv layer",
    "sensitivity": "Layer sensitivity",
    "progress": "Search progress",
}


# Where a graph lies on the page, where its axis titles lie, and the drawn height of the bars
# at each x position (every trace of a stack summed).
LAYOUT = """(title) => {
  const el = Array.from(document.querySelectorAll('.js-plotly-plot')).find(e =>
    String((e.layout.title && (e.layout.title.text || e.layout.title)) || '').startsWith(title));
  const box = n => { if (!n) return null; const b = n.getBoundingClientRect();
    return [b.left, b.top + window.scrollY, b.right, b.bottom + window.scrollY]; };
  const bars = {};
  el.querySelectorAll('.bars .point path').forEach(p => { const b = p.getBBox();
    const x = Math.round(b.x + b.width / 2); bars[x] = (bars[x] || 0) + b.height; });
  return {plot: box(el), x: box(el.querySelector('.g-xtitle')), y: box(el.querySelector('.g-ytitle')),
          ytype: el._fullLayout.yaxis ? el._fullLayout.yaxis.type : null, bars: Object.values(bars),
          categories: new Set((el.data || []).flatMap(t => (t.x || []).map(String))).size};
}"""


def rendered(graphs: list[dict], title: str) -> dict:
    """The graph with that title, checked to hold data and to have been drawn (a table has no
    marks to count)."""
    found = [g for g in graphs if str(g["title"]).startswith(title)]
    assert found, (title, [g["title"] for g in graphs])
    assert found[0]["points"] > 0 and found[0]["drawn"] > 0 or title == TITLES["summary"], found[0]
    return found[0]


def inside(inner: list[float], outer: list[float]) -> bool:
    return (
        inner[0] >= outer[0] - 1
        and inner[1] >= outer[1] - 1
        and inner[2] <= outer[2] + 1
        and inner[3] <= outer[3] + 1
    )


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def check_layout(page) -> None:  # noqa: ANN001
    """What the issue saw wrong: the summary hidden behind the note icon, axis titles clipped or
    overlapping, one big bar hiding the others."""
    summary = page.evaluate(LAYOUT, TITLES["summary"])
    others = [page.evaluate(LAYOUT, t) for k, t in TITLES.items() if k != "summary"]
    first = min(others, key=lambda o: (o["plot"][1], o["plot"][0]))  # top, then left: the grid's order
    assert (summary["plot"][1], summary["plot"][0]) < (first["plot"][1], first["plot"][0]), (summary, others)
    trade = page.evaluate(LAYOUT, TITLES["trade-off"])
    assert trade["x"] and trade["y"] and not overlap(trade["x"], trade["y"]), trade
    assert inside(trade["x"], trade["plot"]) and inside(trade["y"], trade["plot"]), trade  # not clipped
    found = page.evaluate(LAYOUT, TITLES["bytes"])
    assert found["ytype"] == "log" and len(found["bars"]) == found["categories"], found
    assert min(found["bars"]) >= 2, found  # every layer's bar can be seen


def not_blank(path: Path) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20, path  # a page, not an empty canvas


def browser(p):  # noqa: ANN001, ANN201
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def test_the_dashboard_shows_autoprunes_figures_live(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright comes with the dev extras")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = str(write_spec(tmp_path, trials=4))
    assert search(spec, "--storage", url, "--study", "live").returncode == 0
    assert (
        run_cli(
            "sensitivity", "--storage", url, "--study", "live", "--png", str(tmp_path / "s.png"), "-q"
        ).returncode
        == 0
    )
    final = run_cli("finalize", spec, "--storage", url, "--study", "live", "-k", "1", "-q")
    assert final.returncode == 0, final.stderr
    shots = tmp_path / "screenshots"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autoprune", "dashboard", "--storage", url, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with sync_api.sync_playwright() as p:
            page = browser(p).new_page(viewport={"width": 1280, "height": 900})
            wait_for(lambda: _answers(port), timeout=60)
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.get_by_text("live").first.click()
            expect = sync_api.expect
            expect(page.get_by_text(TITLES["progress"]).first).to_be_visible(timeout=30_000)
            graphs = page.evaluate(GRAPHS)
            for title in TITLES.values():
                rendered(graphs, title)
            assert rendered(graphs, TITLES["trade-off"])["xtype"] == "log"  # ratios span orders of magnitude
            expect(page.get_by_text(TITLES["summary"]).first).to_be_visible()  # no click on the note
            check_layout(page)
            page.screenshot(path=str(shots / "study.png"), full_page=True)
            not_blank(shots / "study.png")
            # every trial's page fits the window: no attribute runs past a line
            page.goto(page.url.rstrip("/") + "/trials")
            trials = len(
                optuna.load_study(study_name="live", storage=url).trials
            )  # 4 and their final re-runs
            assert trials > 4
            expect(page.get_by_text(f"{trials} Trials")).to_be_visible(timeout=30_000)
            for n in range(trials):
                page.get_by_text(f"Trial {n}", exact=True).first.click()
                expect(page.get_by_text(f"Trial {n} (trial_id=")).to_be_visible(timeout=10_000)
                width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                assert width[0] <= width[1], (n, width)
            page.screenshot(path=str(shots / "trial.png"), full_page=True)
            not_blank(shots / "trial.png")
            # a worker adds a trial; the open page shows it without a reload (Live Update)
            assert search(spec, "--storage", url, "--study", "live", "--trials", "5").returncode == 0
            expect(page.get_by_text(f"{trials + 1} Trials")).to_be_visible(timeout=60_000)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_report_opens_without_a_network_with_every_figure(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright comes with the dev extras")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    default = REPO / "studies" / "digits-lenet5.toml"  # the default study, with a bounded budget
    assert search(str(default), "--storage", url, "--trials", "6").returncode == 0
    assert run_cli("sensitivity", "--storage", url, "--png", str(tmp_path / "s.png"), "-q").returncode == 0
    out = run_cli(
        "report",
        "--storage",
        url,
        "--out",
        str(tmp_path / "r.html"),
        "--png",
        str(tmp_path / "png"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(TITLES) <= set(r["figures"]) and len(r["png"]) == len(r["figures"])
    for png in r["png"]:  # plotly's own export of the figure, at the size asked
        not_blank(Path(png))
        assert struct.unpack(">II", Path(png).read_bytes()[16:24]) == (1100, 520), png
    with sync_api.sync_playwright() as p:
        context = browser(p).new_context(offline=True)  # nothing can be fetched
        page = context.new_page()
        fetched = []
        page.on("request", lambda request: fetched.append(request.url))
        page.goto((tmp_path / "r.html").as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5", timeout=30_000)
        graphs = page.evaluate(GRAPHS)
        for title in TITLES.values():
            rendered(graphs, title)
        assert all(u.startswith("file:") or u.startswith("data:") for u in fetched), fetched
        body = page.inner_text("body")
        assert "digits-lenet5" in body and "Spec" in body and "Machine" in body
        # the summary ends on its verdict: 6 trials reach the budget on some machines, not on others
        assert ("Export the best" in body) != ("No trial is within" in body), body
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        not_blank(tmp_path / "report.png")
