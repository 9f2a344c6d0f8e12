"""``cluster_tractogram`` and ``connectome_of`` called from Python: the files the CLI writes, without argparse."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.io.tractogram import load_tractogram
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.pipeline import ClusterOptions, ConnectomeOptions, Console, cluster_tractogram, connectome_of


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """A tiny noise-free crossing: 2 bundles of 12 streamlines, with ROIs."""
    config = PhantomConfig(preset="crossing", seed=3, snr=None, ndirs=6, nb0=1, streamlines_per_bundle=12)
    return save_phantom(simulate(config), tmp_path_factory.mktemp("eval") / "crossing")


def without_run_facts(record: dict) -> dict:
    """A record less what differs between two runs of the same call (time, argv, creation date)."""
    out = {k: v for k, v in record.items() if k not in ("seconds", "provenance", "summary")}
    prov = record.get("provenance", {})
    out["provenance"] = {k: v for k, v in prov.items() if k not in ("argv", "created")}
    return out


def test_cluster_tractogram_writes_what_the_cli_writes(cli, crossing, tmp_path):
    tracts = crossing / "tractogram.trk"
    printed = io.StringIO()
    found = cluster_tractogram(tracts, tmp_path / "lib", ClusterOptions(ordering="random", seed=2, format="trx"),
                               phantom=crossing, console=Console(stream=printed))
    res = cli("cluster", tracts, "--out", tmp_path / "cli", "--ordering", "random", "--seed", "2",
              "--format", "trx", "--phantom", crossing)
    assert res.returncode == 0, res.stderr

    lib, run = tmp_path / "lib", tmp_path / "cli"
    assert sorted(p.name for p in lib.iterdir()) == sorted(p.name for p in run.iterdir())
    assert (lib / "clusters.csv").read_text() == (run / "clusters.csv").read_text()
    a, b = json.loads((lib / "clusters.json").read_text()), json.loads((run / "clusters.json").read_text())
    assert without_run_facts(a) == without_run_facts(b)
    for name in a["files"] + [a["centroids_file"]]:
        x, y = load_tractogram(lib / name), load_tractogram(run / name)
        assert len(x) == len(y) and all(np.array_equal(p, q) for p, q in zip(x.streamlines, y.streamlines))
    assert found.record["n_clusters"] == len(found.clustering) == 2 and found.agreement["ari"] == 1.0
    # the same lines as the CLI, but for the time taken
    assert [line.split(" in ")[0] for line in printed.getvalue().splitlines()] == \
           [line.split(" in ")[0] for line in res.stdout.splitlines()]


def test_cluster_options_are_checked_when_made():
    with pytest.raises(ConfigError, match="threshold"):
        ClusterOptions(threshold=0)
    with pytest.raises(ConfigError, match="format"):
        ClusterOptions(format="vtk")


def test_connectome_of_writes_what_the_cli_writes(cli, crossing, tmp_path, capsys):
    # the parcels: each bundle's head and tail regions, labels 1..4
    rois = sorted((crossing / "gt" / "rois").glob("*.nii.gz"))
    ref = nib.load(rois[0])
    labels = np.zeros(ref.shape, np.int16)
    for k, roi in enumerate(rois, start=1):
        labels[np.asarray(nib.load(roi).dataobj) > 0] = k
    parc = tmp_path / "parc.nii.gz"
    nib.save(nib.Nifti1Image(labels, ref.affine), parc)
    tracts = crossing / "tractogram.trk"

    options = ConnectomeOptions(assignment="end", scale="length")
    conn = connectome_of(tracts, parc, tmp_path / "lib.csv", options, json_out=tmp_path / "lib_full.json",
                         assignments_out=tmp_path / "lib.txt", console=Console(quiet=True))
    assert capsys.readouterr().out == ""                       # quiet: nothing printed
    res = cli("connectome", tracts, "--labels", parc, "--out", tmp_path / "cli.csv", "--assignment", "end",
              "--scale", "length", "--json", tmp_path / "cli_full.json", "--assignments", tmp_path / "cli.txt")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "lib.csv").read_text() == (tmp_path / "cli.csv").read_text()
    assert (tmp_path / "lib.txt").read_text() == (tmp_path / "cli.txt").read_text()
    a, b = (json.loads((tmp_path / f"{name}_full.json").read_text()) for name in ("lib", "cli"))
    assert a["matrix"] == b["matrix"] and a["summary"] == b["summary"]
    side = json.loads((tmp_path / "lib.csv.json").read_text())               # the CSV's sidecar
    assert side["equivalent"].endswith("-assignment_end_voxels -scale_length")
    assert conn.summary()["assigned"] == 24            # every ground-truth streamline joins its two regions
    assert len(conn.node_labels) == 4 and conn.matrix.sum() > 0


def test_connectome_options_are_checked_when_made():
    with pytest.raises(ConfigError, match="--radius applies to --assignment radial only"):
        ConnectomeOptions(assignment="end", radius=2.0)
    with pytest.raises(ConfigError, match="positive number of mm"):
        ConnectomeOptions(radius=-1.0)
    assert ConnectomeOptions().equivalent() == "tck2connectome TRACTO PARC OUT -symmetric -assignment_radial_search 4"
