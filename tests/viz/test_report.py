"""The run report: figures, a self-contained HTML page, refusals, and a real headless browser."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from difftract.errors import OutputExistsError
from difftract.eval.tractometer import load_scoring, score
from difftract.viz.report import MethodResult, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.rows = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1


@pytest.fixture(scope="module")
def report(tmp_path_factory, fibercup, phantom_dir):
    config = load_scoring(phantom_dir)
    gt = fibercup.streamlines
    half = gt[::2]
    rgb = np.abs(fibercup.peaks[..., 0, :]) * np.clip(fibercup.fractions[..., :1], 0, 1)
    results = [MethodResult("ground_truth", gt, fibercup.voxel_size, score(gt, config).scores, 0.0, {"step_mm": 1.0}),
               MethodResult("half", half, fibercup.voxel_size, score(half, config).scores, 1.5, {"step_mm": 1.0},
                            {"command": "track", "seed": 0})]
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, title="fibercup <test>", rgb=rgb, mask=fibercup.mask, results=results,
                        params={"method": "det"}, provenance={"dti": {"command": "fit dti"}})
    return path, results, rgb, fibercup


def test_the_page_is_self_contained_with_its_figures_beside_it(report):
    path, results, _, _ = report
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    assert page.rows == 1 + len(results)                          # header + one row per method
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    names = {p.name for p in path.parent.glob("report_*.png")}
    assert names == {"report_colour_fa.png", "report_bundles.png", "report_tracks_ground_truth.png",
                     "report_tracks_half.png"}
    assert all((path.parent / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    text = path.read_text(encoding="utf-8")
    assert "fibercup &lt;test&gt;" in text and "<test>" not in text   # titles are escaped
    assert "fit dti" in text and "&quot;seed&quot;: 0" in text          # provenance is shown
    gt_row = text.split("<td>ground_truth</td>")[1].split("</tr>")[0]
    assert "<td>1.000</td>" in gt_row                                    # ground truth: VC = 1


def test_existing_report_is_refused_without_force_and_no_scores_means_no_bars(report, tmp_path):
    path, results, rgb, ph = report
    with pytest.raises(OutputExistsError):
        write_report(path.parent, title="again", rgb=rgb, mask=ph.mask, results=results)
    plain = [MethodResult("det", results[1].streamlines, ph.voxel_size)]
    out = write_report(tmp_path, title="no truth", rgb=rgb, mask=None, results=plain)
    assert not (tmp_path / "report_bundles.png").exists()
    assert "VC" not in out.read_text(encoding="utf-8").split("<tbody>")[0]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    path = report[0]
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # software WebGL
             "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]   # no page errors
    assert "Per-bundle scores" in dom.stdout and dom.stdout.count("<img") == 4
    run = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_results_with_profiles_get_a_tractometry_section(fibercup, phantom_dir, tmp_path):
    from difftract.eval.profiles import tractometry, truth_profiles

    config = load_scoring(phantom_dir)
    fa = 0.75 * np.clip(fibercup.fractions.sum(-1), 0, 1)        # a stand-in FA map: fibre fraction
    md = np.full(fibercup.shape, 0.8e-3)
    reference = truth_profiles(config, fa, md)
    half = fibercup.streamlines[::2]
    results = [MethodResult("half", half, fibercup.voxel_size, score(half, config).scores,
                            profiles=tractometry(half, config, fa, md, reference=reference)),
               MethodResult("plain", half, fibercup.voxel_size)]    # no profiles: left out of the section
    rgb = np.abs(fibercup.peaks[..., 0, :])
    text = write_report(tmp_path, title="profiles", rgb=rgb, mask=fibercup.mask, results=results).read_text()
    assert (tmp_path / "report_profiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = text.split("<h2>Tractometry</h2>")[1].split("<h2>")[0]
    assert section.count("<tr>") == 1 + len(config.bundles) and "<td>plain</td>" not in section
    assert "<td>horizontal</td><td>100</td>" in section and "gaussian" in section and "report_profiles.png" in section
    assert "<td>0.800</td>" in section                                  # MD in 10^-3 mm^2/s
