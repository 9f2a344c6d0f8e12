"""The main job as a library call: a subject directory -> maps, a tractogram, scores and a report.

:func:`run_subject` reads the scan once, then fits, tracks, scores and reports through the
same stage functions as the single commands (:mod:`.fits`, :mod:`.track`, :mod:`.score`,
:mod:`.report`), passing what each stage made to the next in memory. Everything is
written into a staging folder beside ``out`` that becomes ``out`` only when all succeeded
(:func:`difftract.io.atomic.atomic_directory`); an existing ``out`` is replaced only with
``force``. Each stage prints, and its sidecar records, the single command that redoes it.

``difftract run`` parses its options into :class:`RunOptions` and calls this;
:func:`.demo.run_demo` runs it on the simulated phantom.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..console import Console, command_line
from .run_options import CSD_LMAX, DEFAULT_METHOD, FORMATS, METHODS, RunOptions  # noqa: F401 (re-exported)
from .subject import Subject

log = logging.getLogger("difftract")

@dataclass
class RunSummary:
    """What a run made: per method, its tractogram and result; the seconds it took."""

    out: Path
    tracks: dict[str, Path]
    streamlines: dict[str, int]
    mean_length_mm: dict[str, float]
    scores: dict[str, dict]
    seconds: float = 0.0


def run_subject(subject: str | Path | Subject, out: str | Path, options: RunOptions = RunOptions(), *,
                console: Console = Console(), force: bool = False) -> RunSummary:
    """Run the main job on one subject directory into ``out`` (see the module docstring).

    Parameters
    ----------
    subject : path or Subject
        The subject's folder (difftract's or the HCP's layout; a brain mask is required).
    out : path
        The output folder (created; replaced only with ``force``).
    options : RunOptions
    console : Console
        Where stage lines and summaries go (``Console(quiet=True)`` for none).

    Returns
    -------
    RunSummary
    """
    from ..io.atomic import atomic_directory, check_output
    from ..io.sidecar import final_paths
    from .shards import join

    subject = subject if isinstance(subject, Subject) else Subject.find(subject)
    subject.require_mask()
    options.compute.torch_device        # an unknown or absent device is refused before the scan is read
    out = Path(out)
    check_output(out, force, inputs=[*subject.files, *(p for p in (options.stop_mask, options.weights) if p),
                                     subject.directory])
    learned = _load_model(options)              # bad weights are refused before any fitting
    if learned is not None:     # (run_into resolves too, for the demo): a weight of 0 beside --shell is refused
        options = options.resolved(learned[1])     # here, before the scan is read
    start = time.perf_counter()
    dwi = subject.load(options.zero_nonfinite)  # the one read of the scan
    stop_given = given_stop_mask(options, subject, dwi)
    group = join(options.compute.torch_device)   # under torchrun the ranks share the tracking (.shards)
    if group is not None and not group.leader:
        return _help_track(subject, dwi, out, options, learned, stop_given)
    with atomic_directory(out, force, kind="partial") as staging, final_paths(staging, out):
        summary = run_into(subject, dwi, staging, options, console=console, learned=learned, stop_given=stop_given)
    summary.out, summary.seconds = out, time.perf_counter() - start
    summary.tracks = {m: out / p.name for m, p in summary.tracks.items()}
    first = options.methods[0]
    console.say(f"\nrun {first}: {summary.streamlines[first]:,} streamlines, mean length "
                f"{summary.mean_length_mm[first]:.1f} mm, {summary.seconds:.0f} s -> {out / 'report.html'}")
    return summary


def run_into(subject: Subject, dwi, directory: Path, options: RunOptions, *, console: Console = Console(),
             learned=None, stop_given: np.ndarray | None = None, title: str | None = None,
             helper: bool = False) -> RunSummary:
    """The run's stages, written into an existing (staging) ``directory``; :func:`run_subject` and the demo share it."""
    from ..eval.tractometer import load_scoring
    from ..io.nifti import save_nifti
    from ..io.sidecar import provenance, write_json
    from .fits import fit_dti
    from .report import report
    from .score import score_tractogram

    if learned is not None:
        options = options.resolved(learned[1])     # run.json and the track line hold the guide weight used
    compute = options.compute
    scan = (subject.dwi, subject.bval, subject.bvec)
    common = {"mask": subject.mask, "zero_nonfinite": options.zero_nonfinite}

    line = command_line("fit dti", *scan, **common, out_dir=directory / "dti", device=compute.named_device)
    console.stage(line)
    dti = fit_dti(dwi, directory / "dti", compute=compute, console=console, equivalent=line)

    stop_path = options.stop_mask or subject.wm
    if stop_given is not None:
        stop, stop_name = stop_given, str(stop_path)
    else:
        stop = dwi.mask & (np.nan_to_num(dti.fa) > options.fa_threshold)
        if not stop.any():
            raise ConfigError(f"{subject.directory}: no brain voxel has FA > {options.fa_threshold}; lower "
                              "--fa-threshold or give --stop-mask")
        stop_path = save_nifti(directory / "stop_mask.nii.gz", stop, dwi.affine,
                               sidecar={"description": f"brain mask & DTI FA > {options.fa_threshold}"})
        stop_name = f"brain voxels with FA > {options.fa_threshold:g}"
    del dti

    truth = load_scoring(subject.truth) if subject.truth is not None else None   # masks read once per run
    fod = None
    summary = RunSummary(directory, {}, {}, {}, {})
    for method in options.methods:
        if method == "ddtracking":
            guide, weight = None, options.fodf_guide         # resolved above
            if weight:     # the CSD fODF guides its steps (models/ddtracking/guide.py)
                if fod is None:
                    fod = _csd_stage(subject, dwi, directory, options, console)
                guide = fod
            source = _learned_input_stage(subject, dwi, directory, learned, options, console, guide)
            # the weight is written out, so that the line repeats this run whatever a later default
            track_extra = {"weights": options.weights, "model": options.model, "fodf_guide": weight,
                           "matmul_dtype": None if options.matmul_dtype == "float32" else options.matmul_dtype,
                           "symmetries": None if options.symmetries == "none" else options.symmetries}
            if guide is not None:
                track_extra |= {"sh": directory / "fod.nii.gz"}
        else:
            if fod is None:
                fod = _csd_stage(subject, dwi, directory, options, console)
            source = fod
            track_extra = {"sh": directory / "fod.nii.gz"}
        tracks = directory / options.tracks_name(method)
        result = _track_stage(subject, dwi, tracks, method, source, stop, stop_path, stop_name, options, console,
                              track_extra)
        summary.tracks[method] = tracks
        summary.streamlines[method] = result.n_streamlines
        summary.mean_length_mm[method] = float(result.lengths_mm.mean()) if len(result.lengths_mm) else 0.0
        if truth is not None and not helper:
            scores = directory / options.scores_name(method)
            line = command_line("score", tracks, phantom=subject.directory, json=scores)
            console.stage(line)
            summary.scores[method] = score_tractogram(tracks, truth, scores, console=console,
                                                      equivalent=line).scores
    if helper:
        return summary
    params = {"subject": str(subject.directory), **options.record()}
    write_json(directory / "run.json", provenance("run", params, seed=options.seed, inputs=subject.files))
    report(directory, [(m, summary.tracks[m]) for m in options.methods],
           title=title or f"difftract run: {subject.name} ({', '.join(options.methods)})",
           params={k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()},
           mask=subject.mask, truth=truth)
    return summary


def _help_track(subject: Subject, dwi, out: Path, options: RunOptions, learned, stop_given) -> RunSummary:
    """A rank other than 0 under torchrun: the fits and its share of the tracking, in a scratch folder it removes.

    Rank 0 writes ``out``, scores and reports; this summary has the run's streamline counts only.
    """
    import shutil

    from ..io.atomic import staging_dir

    scratch = staging_dir(out, "tmp")
    try:
        return run_into(subject, dwi, scratch, options, console=Console(quiet=True), learned=learned,
                        stop_given=stop_given, helper=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load_model(options: RunOptions):
    """DDTracking's network and metadata when a method needs it (read before the scan, so bad weights fail first)."""
    if "ddtracking" not in options.methods:
        return None
    from ..models.ddtracking.getter import load_ddtracking

    return load_ddtracking(options.weights, options.model)


def given_stop_mask(options: RunOptions, subject: Subject, dwi) -> np.ndarray | None:
    """The given stop mask (or the subject's white matter), checked to seed inside the brain, before any fit.

    The stop mask is run's seed mask too: one on another grid, empty, or with no voxel in
    the brain mask (where the fits are made) would only fail, or give no streamline, after
    the fits.
    """
    from ..io.dwi import load_mask

    path = options.stop_mask or subject.wm
    if path is None:
        return None
    stop = load_mask(path, dwi.shape, dwi.affine, "stop mask")
    if not (stop & dwi.mask).any():
        raise ConfigError(f"{path}: the stop mask has no voxel inside the brain mask {subject.mask.name} "
                          f"({int(stop.sum())} voxels, all outside it), so every seed would start where nothing "
                          "is fitted; give a white-matter mask on this subject's brain")
    return stop


def _learned_input_stage(subject, dwi, directory: Path, learned, options: RunOptions, console: Console,
                         guide=None):
    """DDTracking's input, fitted once at the network's lmax and written, then tracked: the signal SH
    (``fit sh``, the shell nearest b=1000, float32) as ``sh.nii.gz``, or for a network trained on the
    CSD fODF (``input`` fodf) that fODF (``fit csd``, the highest shell) as ``fod_ddtracking.nii.gz``,
    which the network reads times :data:`~difftract.models.ddtracking.data.FODF_SCALE`; ``guide``, the
    CSD fODF (a :class:`~.sources.FodSource`) that guides its steps, or None."""
    from ..models.ddtracking.data import fodf_input, signal_sh_shell
    from ..reconst.sh import lmax_from_ncoeffs
    from .fits import fit_csd, fit_sh
    from .sources import LearnedSource

    model, meta = learned
    lmax, float32 = lmax_from_ncoeffs(model.config.n_coeffs), replace(options.compute, dtype="float32")
    scan = dict(mask=subject.mask, zero_nonfinite=options.zero_nonfinite)
    if model.config.input == "fodf":
        out = directory / "fod_ddtracking.nii.gz"
        line = command_line("fit csd", subject.dwi, subject.bval, subject.bvec, **scan, out=out, lmax=lmax,
                            dtype="float32", device=options.compute.named_device)
        console.stage(line)
        fit = fit_csd(dwi, out, lmax=lmax, compute=float32, console=console, equivalent=line)
        return LearnedSource.for_scan(model, meta, fodf_input(fit.coeffs), dwi, guide)
    out, shell = directory / "sh.nii.gz", signal_sh_shell(dwi.bvals)
    line = command_line("fit sh", subject.dwi, subject.bval, subject.bvec, **scan, out=out, lmax=lmax, shell=shell,
                        dtype="float32", device=options.compute.named_device)
    console.stage(line)
    fit = fit_sh(dwi, out, lmax=lmax, shell=shell, compute=float32, console=console, equivalent=line)
    return LearnedSource.for_scan(model, meta, fit.coeffs.astype(np.float32, copy=False), dwi, guide)


def _csd_stage(subject, dwi, directory: Path, options: RunOptions, console: Console):
    """The CSD fODF for the classical rules, kept in float32 (the values written to ``fod.nii.gz``)."""
    from ..reconst.sh import well_sampled_shell
    from .fits import fit_csd
    from .sources import FodSource

    out = directory / "fod.nii.gz"
    peaks = directory / "peaks.nii.gz" if options.peaks else None
    lmax, shell = options.lmax, options.shell
    if options.methods == ("ddtracking",) and lmax is None and shell is None:
        # the guide's fODF alone: the highest shell with the directions for lmax 6+, as FodSource.for_guide
        shell, lmax = well_sampled_shell(dwi.gtab, up_to=CSD_LMAX) or (None, None)
    lmax = CSD_LMAX if lmax is None else lmax
    line = command_line("fit csd", subject.dwi, subject.bval, subject.bvec, mask=subject.mask,
                        zero_nonfinite=options.zero_nonfinite, out=out, peaks=peaks, lmax=lmax, shell=shell,
                        device=options.compute.named_device)
    console.stage(line)
    fit = fit_csd(dwi, out, peaks_out=peaks, lmax=lmax, shell=shell, compute=options.compute,
                  console=console, equivalent=line)
    return FodSource(fit.coeffs.astype(np.float32), legacy=False, description=str(out), mask=dwi.mask)


def _track_stage(subject, dwi, tracks: Path, method: str, source, stop, stop_path, stop_name: str,
                 options: RunOptions, console: Console, extra: dict):
    from .track import Seeding, Stopping, TrackOptions, track

    track_options = TrackOptions(method=method, seeds_per_voxel=options.seeds_per_voxel,
                                 min_len_mm=options.min_len_mm, seed=options.seed,
                                 fodf_guide=extra.get("fodf_guide") if method == "ddtracking" else None,
                                 matmul_dtype=extra.get("matmul_dtype") or "float32",
                                 symmetries=extra.get("symmetries") or "none")
    line = command_line("track", subject.dwi, subject.bval, subject.bvec, mask=subject.mask,
                        zero_nonfinite=options.zero_nonfinite, stop_mask=stop_path, method=method,
                        seeds_per_voxel=options.seeds_per_voxel, min_len_mm=options.min_len_mm, seed=options.seed,
                        device=options.compute.named_device,
                        out=tracks, **extra)
    console.stage(line)
    result = track(dwi, tracks, source, Stopping.from_mask(stop, str(stop_path)), Seeding(mask=stop,
                   description=str(stop_path)), track_options, compute=options.compute,
                   console=console, inputs=[p for p in (stop_path, extra.get("sh"), extra.get("weights")) if p],
                   equivalent=line)
    if result.n_streamlines == 0:
        if stop_name != str(stop_path):   # made from FA: name it in words, not by its staging path
            raise ConfigError(f"{subject.directory}: no streamline: all {result.n_seeds:,} seeds in the {stop_name} "
                              f"stopped before {options.min_len_mm:g} mm; lower --fa-threshold, give a white-matter "
                              "--stop-mask, or lower --min-len-mm for a small field of view")
        raise InputError(stop_path, f"no streamline: all {result.n_seeds:,} seeds in this stop mask stopped before "
                                    f"{options.min_len_mm:g} mm (the mask is too small or not white matter); give a "
                                    "white-matter --stop-mask, or lower --min-len-mm for a small field of view")
    return result
