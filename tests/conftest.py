"""Session fixtures: small phantoms built once and shared by the tests."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from difftract.phantom import PhantomConfig, save_phantom, simulate


@pytest.fixture(scope="session")
def fibercup():
    """The default fibercup phantom (seed 0, SNR 20, 32 directions at b=1000)."""
    return simulate(PhantomConfig(preset="fibercup", seed=0))


@pytest.fixture(scope="session")
def crossing_noisefree():
    """A small 90-degree crossing without noise, 64 directions."""
    return simulate(PhantomConfig(preset="crossing", seed=0, snr=None, ndirs=64, streamlines_per_bundle=50))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory, fibercup):
    """The fibercup phantom written to disk."""
    out = tmp_path_factory.mktemp("phantoms") / "fibercup"
    return save_phantom(fibercup, out)


@pytest.fixture
def scan(tmp_path):
    """Write a tiny valid scan and return a dict of its paths and arrays (edit to make it bad)."""

    def make(affine=None, n_b0=1, n_dw=6, shape=(4, 5, 3), rng_seed=0):
        rng = np.random.default_rng(rng_seed)
        affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else np.asarray(affine, float)
        n = n_b0 + n_dw
        data = rng.uniform(100, 1000, size=(*shape, n)).astype(np.float32)
        bvals = np.r_[np.zeros(n_b0), np.full(n_dw, 1000.0)]
        bvecs = np.zeros((n, 3))
        dirs = rng.normal(size=(n_dw, 3))
        bvecs[n_b0:] = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        paths = {k: tmp_path / v for k, v in
                 dict(dwi="dwi.nii.gz", bval="dwi.bval", bvec="dwi.bvec", mask="mask.nii.gz").items()}
        nib.save(nib.Nifti1Image(data, affine), paths["dwi"])
        nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine), paths["mask"])
        paths["bval"].write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
        paths["bvec"].write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")
        return {**paths, "data": data, "affine": affine, "bvals": bvals, "bvecs": bvecs, "tmp": tmp_path}

    return make


def _command() -> list[str]:
    script = Path(sys.executable).with_name("difftract")
    if script.exists():  # the installed console script (make test installs it)
        return [str(script)]
    found = shutil.which("difftract")
    return [found] if found else [sys.executable, "-m", "difftract"]


@pytest.fixture
def torchrun_train():
    """Train through the CLI as two DDP processes (gloo, CPU) and check the files were written once.

    ``torchrun_train(model, *args, out=W, epochs=E)`` runs ``difftract -q train MODEL ARGS --out W``
    under ``torch.distributed.run`` and asserts the weights, checkpoint, one metrics line per
    epoch and a sidecar naming the weights' SHA256.
    """
    import json

    from difftract.training.files import output_paths
    from difftract.weights import sha256

    def run(model, *args, out, epochs, timeout=300):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "difftract", "-q", "train", model, *map(str, args), "--out", str(out)],
                             capture_output=True, text=True, env=env, timeout=timeout)
        assert res.returncode == 0, res.stderr[-2000:]
        weights, ckpt, metrics = output_paths(out)
        assert weights.exists() and ckpt.exists()
        assert len(metrics.read_text().splitlines()) == epochs
        assert json.loads(out.with_suffix(".json").read_text())["weights_sha256"] == sha256(weights)

    return run


def _script_env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def _run_script(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=_script_env())


def _run_scripts(*argvs) -> list[subprocess.CompletedProcess]:
    """Start every command line at once, then wait for each: independent runs overlap their ~4 s of imports.

    One torch thread each: side by side, several OpenMP pools on the same cores spin against each other.
    """
    env = {**_script_env(), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*_command(), *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for argv in argvs]
    done = []
    for proc in procs:
        out, err = proc.communicate()
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _run_in_process(*args, cwd=None) -> subprocess.CompletedProcess:
    from difftract.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = main([str(a) for a in args])
        except SystemExit as exc:                      # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        finally:
            os.chdir(here)
    return subprocess.CompletedProcess(["difftract", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cli():
    """Run ``difftract`` in this process: ``cli("fit", "dti", ...)`` gives returncode, stdout and stderr.

    The same ``main()`` the console script calls, without a new interpreter's 3 s of imports;
    :func:`cli_script` runs the installed console script itself.
    """
    return _run_in_process


@pytest.fixture(scope="session")
def cli_script():
    """Run the installed ``difftract`` console script in a subprocess (exit codes as a shell sees them)."""
    return _run_script


@pytest.fixture(scope="session")
def cli_scripts():
    """Run independent ``difftract`` command lines side by side: ``cli_scripts(argv1, argv2)`` gives their results.

    Each is its own console-script process, as with :func:`cli_script`; starting them together
    lets their interpreter start-ups share the cores rather than queue.
    """
    return _run_scripts
