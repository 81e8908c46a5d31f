"""`dvc plots show` and the HTML report, opened in a real browser with no network.

Headless Chromium (Debian's `chromium` package; `.ci/run` installs it) loads each page with
every host name resolving to nothing, takes a screenshot and writes a NetLog. A page fails if
the screenshot is nearly one colour (blank: DVC's stock page, whose Vega scripts come from a
CDN, renders white offline) or if the page asked for any network address. Chromium's own
background requests (updates, accounts) are told apart in the NetLog: they have no initiator,
and the page's carry its file:// origin. Without Chromium every test here is skipped, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MIN_INK = 0.02  # share of pixels that differ from the page's most common colour
OFFLINE_TEMPLATE = ROOT / ".dvc/offline-plots.html"  # committed (.dvc/config points at it)


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does): "
                    "pages not checked in a browser")
    return found


def chromium(browser: str, page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing leaves the machine, even if asked
            "--virtual-time-budget=15000",  # let Vega's asynchronous rendering finish
            *extra, page.resolve().as_uri()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def page_requests(netlog: Path) -> list[str]:
    """Network URLs the page (not the browser itself) asked for, from a Chromium NetLog."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        url = params.get("url", "")
        if event["type"] != start_job or not re.match(r"(https?|wss?|ftp)://", url):
            continue
        if params.get("initiator") != "not an origin" or "file://" in params.get(
                "network_isolation_key", ""):
            urls.append(params["url"])
    return sorted(set(urls))


def render(browser: str, page: Path, tmp: Path) -> dict:
    """{"ink": share of non-background pixels, "requests": page's network URLs, "dom": HTML
    after scripts ran, "png": the screenshot}."""
    from PIL import Image

    png, netlog = tmp / "screenshot.png", tmp / "netlog.json"
    dom = chromium(browser, page, tmp, "--window-size=1200,1600", f"--screenshot={png}",
                   f"--log-net-log={netlog}", "--dump-dom").stdout
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return {"ink": 1 - counts.max() / len(pixels), "requests": page_requests(netlog),
            "dom": dom, "png": png}


def dvc_plots(out: Path, command: str = "show", *args: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", command, "-o", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "index.html"


@pytest.mark.parametrize("command", [["show"], ["diff", "HEAD"]], ids=" ".join)
def test_dvc_plots_renders_offline(browser, tmp_path, command):
    """The repository's own config (plots.html_template) with its committed plot files."""
    assert OFFLINE_TEMPLATE.is_file(), ("the offline plots template is missing: `git checkout "
                                        "-- .dvc/offline-plots.html` or `make plots-template`")
    page = dvc_plots(tmp_path / "plots", *command)
    html = page.read_text()
    assert "cdn.jsdelivr" not in html
    seen = render(browser, page, tmp_path)
    assert seen["requests"] == [], f"the page asked the network for {seen['requests']}"
    assert seen["ink"] > MIN_INK, f"blank page: {seen['ink']:.3%} of pixels drawn"
    plots = html.count("vegaEmbed(")
    drawn = seen["dom"].count('class="marks"')  # one canvas per rendered Vega view
    assert plots > 0 and drawn == plots, f"{drawn} of {plots} plots rendered"


PLOT_FILES = ("dvc.yaml", "study/dvc.yaml", "ranking/dvc.yaml", "selection/dvc.yaml")


@pytest.mark.parametrize("dvc_file", PLOT_FILES)
def test_every_plot_title_makes_an_element_id_dvcs_page_can_script(dvc_file):
    """DVC's page writes each title, its punctuation made "_", into `vegaEmbed('#<id>', spec)`:
    a character it keeps that ends the string or the selector (an apostrophe, a quote, non-ASCII)
    leaves that plot blank, and only a browser would see it. Runs without Chromium."""
    import yaml
    from dvc_render.base import Renderer

    titles = [next(iter(entry)) for entry in
              yaml.safe_load((ROOT / dvc_file).read_text()).get("plots", [])
              if isinstance(entry, dict)]
    bad = [t for t in titles if not re.fullmatch(r"[A-Za-z0-9_-]+", Renderer.remove_special_chars(t))]
    assert not bad, f"{dvc_file}: plot titles DVC's page cannot script (use letters, digits, " \
                    f"spaces and plain punctuation): {bad}"


def test_the_checks_catch_dvcs_stock_cdn_page(browser, tmp_path):
    """The same plots through DVC's own page layout (CDN scripts): the checks above must fail."""
    template = tmp_path / "stock.html"
    template.write_text("<!DOCTYPE html><html><head>{scripts}</head>"
                        "<body>{plot_divs}</body></html>")
    page = dvc_plots(tmp_path / "plots", "show", "--html-template", str(template))
    seen = render(browser, page, tmp_path)
    assert any("cdn.jsdelivr.net" in url for url in seen["requests"]), seen["requests"]
    assert seen["ink"] < MIN_INK


def report_command(test: Path, source: Path, out: Path) -> list[str]:
    """dvc.yaml's report command (its inputs named as the pipeline names them), reading `test`
    and `source` (the prepared arrays exist only after a run) and writing `out`."""
    import shlex

    import yaml

    args = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["cmd"])
    for flag, value in (("--test", test), ("--source", source), ("--out", out)):
        args[args.index(flag) + 1] = str(value)
    return args


def test_the_report_renders_offline(browser, tmp_path):
    """The report stage on the committed metrics and plots; test and source images made up here
    (the prepared arrays exist only after a run, and CI's clean clone has none), one test image
    per row of the confusion files."""
    from transferlab.io import save_arrays

    actual = np.array([int(line.split(",")[0]) for line in
                       (ROOT / "plots/confusion/scratch.csv").read_text().splitlines()[1:]])
    rng = np.random.default_rng(0)
    x = (rng.random((actual.size, 1, 16, 16)) * 255).astype(np.uint8)
    test = tmp_path / "target_test.safetensors"
    save_arrays(test, {"x_test": x, "y_test": actual},
                {"classes": json.dumps([str(c) for c in range(10)])})
    source = tmp_path / "source.safetensors"
    save_arrays(source, {"x_val": x[:20], "y_val": np.arange(20) % 10},
                {"classes": json.dumps([str(c) for c in range(10)])})
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, *report_command(test, source, out)[1:]], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    seen = render(browser, out, tmp_path)
    assert seen["requests"] == [], f"the report asked the network for {seen['requests']}"
    assert seen["ink"] > MIN_INK, f"blank page: {seen['ink']:.3%} of pixels drawn"
    assert seen["dom"].count("<svg") >= 3 and "<img" in seen["dom"]
