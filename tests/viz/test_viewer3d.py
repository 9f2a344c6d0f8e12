"""The report's interactive 3D view: encoding, limits, and a real headless browser (WebGL)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from difftract.viz.report import MethodResult, write_report
from difftract.viz.viewer3d import resample, scene_data, subsample, viewer_section

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# software WebGL (SwiftShader) without the deprecation warning that --disable-gpu prints to the console
FLAGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def _decode(method: dict, scale: float) -> list[np.ndarray]:
    q = np.frombuffer(base64.b64decode(method["points"]), "<i2").reshape(-1, 3) / scale
    n = np.frombuffer(base64.b64decode(method["lengths"]), "<u2")
    return np.split(q, np.cumsum(n)[:-1])


def test_resample_keeps_ends_and_limits_points():
    s = np.stack([np.linspace(0, 99, 100), np.zeros(100), np.zeros(100)], axis=1)
    r = resample(s, 24)
    assert r.shape == (24, 3) and np.allclose(r[0], s[0]) and np.allclose(r[-1], s[-1])
    assert np.allclose(np.diff(r[:, 0]), 99 / 23)                       # even steps along the length
    short = s[:5]
    assert np.array_equal(resample(short, 24), short)
    assert len(subsample([s] * 30 + [s[:1]], 10)) == 10                  # one-point streamlines dropped
    assert len(subsample([s, s[:1]], 10)) == 1


def test_scene_data_round_trips_streamlines_and_slices():
    rng = np.random.default_rng(0)
    rgb = rng.random((20, 16, 8, 3)).astype(np.float32)
    mask = np.zeros((20, 16, 8), bool)
    mask[2:10, 4:12, 1:6] = True
    lines = [np.cumsum(rng.normal(size=(n, 3)), axis=0) + 8 for n in (3, 40, 7)]
    d = scene_data(rgb, mask, [MethodResult("m", lines, 2.0)], max_streamlines=10, max_points=24)
    assert d["shape"] == (20, 16, 8) and d["voxel"] == 2.0 and d["centre"] == [6, 8, 3]
    back = _decode(d["methods"][0], d["scale"])
    assert [len(b) for b in back] == [3, 24, 7]
    assert np.abs(back[0] - lines[0]).max() <= 0.5 / d["scale"] + 1e-9  # int16 quantisation only
    axial = d["slices"][0]
    assert (axial["fixed"], axial["at"], axial["w"], axial["h"]) == (2, 3, 20, 16)
    pixels = np.frombuffer(base64.b64decode(axial["rgb"]), np.uint8).reshape(16, 20, 3)   # rows along y
    assert np.array_equal(pixels[5, 7], (rgb[7, 5, 3] * 255 + 0.5).astype(np.uint8))
    html = viewer_section(rgb, mask, [MethodResult("a</script>", lines, 2.0), MethodResult("b", [], 2.0)])
    assert html.count("</script>") == 2 and "a&lt;/script&gt;" in html   # names cannot close the script
    data = json.loads(re.search(r'id="dt3d-data">(.*?)</script>', html).group(1))
    assert [m["name"] for m in data["methods"]] == ["a</script>", "b"] and data["methods"][1]["shown"] == 0


@pytest.fixture(scope="module")
def report(tmp_path_factory, fibercup):
    rgb = np.abs(fibercup.peaks[..., 0, :]) * np.clip(fibercup.fractions[..., :1], 0, 1)
    results = [MethodResult("ground_truth", fibercup.streamlines, fibercup.voxel_size),
               MethodResult("half", fibercup.streamlines[::2], fibercup.voxel_size)]
    return write_report(tmp_path_factory.mktemp("report3d"), title="3D view", rgb=rgb, mask=fibercup.mask,
                        results=results)


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'u'}", *args],
                          capture_output=True, text=True, timeout=120)


def _status(dom: str) -> str:
    return re.search(r'id="dt3d" data-status="([^"]*)"', dom).group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_3d_view_draws_in_headless_chromium_from_two_angles(report, tmp_path):
    from PIL import Image

    angles = ((-30, 35), (60, -20))
    dom = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", f"{report.as_uri()}#view3d=-30,35"], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]   # no page errors
    assert _status(dom.stdout) == "drawn"
    shots = []
    for az, el in angles:
        shot = tmp_path / f"view3d_az{az}_el{el}.png"
        run = _chromium([f"--screenshot={shot}", "--window-size=1000,700", f"{report.as_uri()}#view3d={az},{el}"],
                        tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        # the section fills the window: controls on top, the canvas below (its background is #141419)
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)[80:680, 20:960]
        background = np.all(np.abs(pixels - (20, 20, 25)) <= 3, axis=-1)
        coloured = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60          # saturated: tracks or colour FA
        assert background.mean() > 0.3, "the canvas is not where expected (or not drawn)"
        assert coloured.mean() > 0.01, f"too few coloured pixels: {coloured.mean():.4f}"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100           # not a uniform fill
        shots.append((shot, pixels))
    assert np.abs(shots[0][1] - shots[1][1]).max(axis=-1).mean() > 10    # two angles, two pictures
    keep = os.environ.get("DIFFTRACT_VIEWER_SHOTS")                      # to look at them
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot, _ in shots:
            shutil.copy(shot, Path(keep) / shot.name)


INTERACT = """<script>
var v = window.difftractView, c = document.getElementById('dt3d-canvas'), out = [];
function note(what) { out.push(what + ':' + v.status + ':' + [v.view.az, v.view.el, v.view.dist.toFixed(1)].join('/')); }
try {
  v.setAngles(10, 80); note('angles');
  var m = document.getElementById('dt3d-method'); m.value = '1'; m.dispatchEvent(new Event('change')); note('method');
  var s = document.getElementById('dt3d-slices'); s.checked = false; s.dispatchEvent(new Event('change')); note('slices');
  c.dispatchEvent(new WheelEvent('wheel', {deltaY: 500, cancelable: true})); note('wheel');
  c.dispatchEvent(new PointerEvent('pointerdown', {clientX: 10, clientY: 10, pointerId: 1}));
  c.dispatchEvent(new PointerEvent('pointermove', {clientX: 50, clientY: 30, pointerId: 1}));
  c.dispatchEvent(new PointerEvent('pointerup', {pointerId: 1})); note('drag');
  document.getElementById('dt3d-reset').click(); note('reset');
} catch (e) { out.push('threw ' + e.message); }
document.body.setAttribute('data-interactions', out.join(' '));
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_controls_redraw_without_errors(report, tmp_path):
    page = tmp_path / "interact.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", INTERACT), encoding="utf-8")
    dom = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0 and "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    steps = dict(s.split(":", 1) for s in re.search(r'data-interactions="([^"]*)"', dom.stdout).group(1).split())
    assert set(steps) == {"angles", "method", "slices", "wheel", "drag", "reset"}, steps
    assert all(v.startswith("drawn:") for v in steps.values()), steps
    view = {k: [float(x) for x in v.split(":")[1].split("/")] for k, v in steps.items()}
    assert view["angles"][:2] == [10, 80] and view["wheel"][2] > view["slices"][2]    # wheel down: farther
    assert view["drag"][:2] == [10 - 0.4 * 40, 80 + 0.4 * 20]                         # drag: turn and tilt
    assert view["reset"] == [-30, 25, view["angles"][2]]                             # back home


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_without_webgl_the_section_says_so_and_the_page_still_works(report, tmp_path):
    dom = _chromium(["--disable-webgl", "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert _status(dom.stdout) == "no-webgl"
    assert "3D view unavailable" in dom.stdout and dom.stdout.count("<img") == 3   # colour FA + 2 methods
