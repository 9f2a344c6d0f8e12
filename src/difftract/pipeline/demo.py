"""The demo: the main job on the built-in fibercup phantom, DDTracking and ``det`` side by side.

:func:`run_demo` simulates the phantom into ``out/phantom``, runs the run's stages on it
(:func:`.run.run_into`, so the demo is :func:`.run.run_subject` on a phantom, with both
trackers) and scores the ground truth itself (the ceiling a tracker can reach), all in
one staging folder that becomes ``out`` at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..console import Console, command_line
from .run import RunOptions, RunSummary, given_stop_mask, run_into
from .subject import Subject


def simulate_to(config, out: Path, *, console: Console = Console(), force: bool = False,
                inputs: list[Path] = ()):
    """Simulate the phantom of ``config``, write it to ``out`` and describe it; returns the phantom."""
    from ..io.atomic import check_output
    from ..phantom import save_phantom, simulate

    check_output(out, force, inputs=list(inputs))
    start = time.perf_counter()
    phantom = simulate(config)
    save_phantom(phantom, out, force=force, inputs=list(inputs))
    for line in phantom_lines(phantom.summary(), out, time.perf_counter() - start):
        console.say(line)
    return phantom


def phantom_lines(summary: dict, out: Path, seconds: float) -> list[str]:
    """A phantom's summary for people: grid, acquisition, masks, and a row per bundle."""
    lines = [f"phantom '{summary['preset']}' (seed {summary['seed']}) written to {out} in {seconds:.1f} s",
             f"  grid {summary['shape']} at {summary['voxel_size_mm']:g} mm, {summary['volumes']} volumes, "
             f"shells {summary['shells']}, SNR {'none' if summary['snr'] is None else format(summary['snr'], 'g')}",
             f"  brain {summary['mask_voxels']} voxels, white matter {summary['wm_voxels']}, "
             f"crossing voxels {summary['crossing_voxels']}",
             f"  {'bundle':<14}{'streamlines':>12}{'mask vox':>10}{'head vox':>10}{'tail vox':>10}"]
    for name, b in summary["bundles"].items():
        lines.append(f"  {name:<14}{b['streamlines']:>12}{b['mask_voxels']:>10}{b['head_voxels']:>10}"
                     f"{b['tail_voxels']:>10}")
    lines.append(f"  total {summary['streamlines']} streamlines, mean length {summary['mean_length_mm']:.1f} mm")
    if "randomized" in summary:
        acq, tissue = summary["randomized"]["acquisition"], summary["randomized"]["tissue"]
        noise = "no noise" if acq["snr"] is None else f"{acq['noise']} noise, {acq['coils']} coil(s)"
        lines.append(f"  randomized: {noise}, S0 {tissue['s0_fibre']:.0f} (bias {tissue['bias']:.2f}); "
                     "tissue per bundle in dwi.json")
    return lines


def run_demo(out: str | Path = "difftract_demo", seed: int = 0, *, console: Console = Console(),
             force: bool = False) -> RunSummary:
    """Simulate fibercup, fit, track with DDTracking and ``det``, score both and the ground truth, write the report."""
    from ..io.atomic import atomic_directory
    from ..io.sidecar import final_paths
    from ..models.ddtracking.getter import load_ddtracking
    from ..phantom import PhantomConfig
    from .score import score_tractogram

    import os

    from ..errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the demo runs in one process: start it without torchrun")
    out = Path(out)
    start = time.perf_counter()
    options = RunOptions(methods=("ddtracking", "det"), seed=seed, peaks=True)
    with atomic_directory(out, force, kind="partial") as work, final_paths(work, out):
        console.stage(command_line("simulate", work / "phantom", preset="fibercup", seed=seed))
        simulate_to(PhantomConfig(preset="fibercup", seed=seed), work / "phantom", console=console)
        subject = Subject.find(work / "phantom")
        dwi = subject.load()
        summary = run_into(subject, dwi, work, options, console=console, learned=load_ddtracking(),
                           stop_given=given_stop_mask(options, subject, dwi), title="difftract demo: the fibercup phantom")
        truth = subject.directory / "tractogram.trk"
        line = command_line("score", truth, phantom=subject.directory, json=work / "scores_gt.json")
        console.stage(line)
        score_tractogram(truth, subject.directory, work / "scores_gt.json", console=console, equivalent=line)
    summary.out, summary.seconds = out, time.perf_counter() - start
    console.say(f"\nQC pictures: {out / 'phantom' / 'qc_phantom.png'}, {out / 'dti' / 'qc_dti.png'}, "
                f"{out / 'fod_qc.png'}")
    console.say(f"demo finished in {summary.seconds:.0f} s; report: {out / 'report.html'}")
    return summary
