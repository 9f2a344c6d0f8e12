"""The main job as library calls: load a scan once, fit, track, score, report.

>>> from difftract.pipeline import RunOptions, run_subject
>>> summary = run_subject("sub-01", "sub-01_det", RunOptions(methods=("det",)))   # doctest: +SKIP

The CLI's ``run``, ``demo``, ``fit``, ``track``, ``score``, ``cluster`` and ``connectome``
parse their options and call these functions (``docs/pipeline.md`` walks a scan through them file by file).
"""

from .cluster import ClusterOptions, ClusterResult, cluster_tractogram
from .compute import Compute
from .connectome import ConnectomeOptions, connectome_of
from ..console import Console, command_line
from .demo import run_demo, simulate_to
from .fits import fit_csd, fit_dti, fit_sh
from .run import RunOptions, RunSummary, run_into, run_subject
from .score import score_tractogram
from .subject import Subject
from .sources import FodSource, LearnedSource
from .track import Seeding, Stopping, TrackOptions, TrackResult, track

__all__ = ["ClusterOptions", "ClusterResult", "cluster_tractogram", "ConnectomeOptions", "connectome_of", "Compute",
           "Console", "command_line", "run_demo", "simulate_to", "fit_csd", "fit_dti", "fit_sh",
           "RunOptions", "RunSummary", "run_into", "run_subject", "score_tractogram", "Subject", "FodSource",
           "LearnedSource", "Seeding", "Stopping", "TrackOptions", "TrackResult", "track"]
