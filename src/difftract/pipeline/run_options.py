"""What a run does: :class:`RunOptions`, the options of :func:`.run.run_subject` and of a cohort,
and the rules and formats it may choose from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError
from ..models.ddtracking.defaults import check_matmul_dtype, check_model_choice
from ..models.ddtracking.symmetrise import check_symmetries
from .compute import Compute

METHODS = ("ddtracking", "det", "prob")
# The default rule: CSD `det`. On the test columns of benchmarks/bench_ddtracking.py (unseen
# geometry, the brain phantom, foreign signal) DDTracking's F1 is not the 3 points above the
# best classical rule that would make it the better default, and det tracks far faster on a
# CPU; the figures are in the README ("Learned tracking"), measured by that benchmark.
DEFAULT_METHOD = "det"
FORMATS = ("trx", "trk", "tck")
CSD_LMAX = 8


@dataclass(frozen=True)
class RunOptions:
    """What a run does (``None``: the default of the stage that uses it).

    Attributes
    ----------
    methods : tuple of str
        Tracking rules, each giving one tractogram (``tracks.FORMAT`` for one method,
        ``tracks_METHOD.FORMAT`` for several).
    weights : path, optional
        DDTracking weights (default: the shipped ``model``).
    model : {"full", "fast"}, optional
        The shipped DDTracking model (default:
        :data:`~difftract.models.ddtracking.defaults.DEFAULT_MODEL`).
    stop_mask : path, optional
        Tracking and seeding mask; default the subject's ``wm.nii.gz``, else the brain mask
        where DTI FA > ``fa_threshold`` (written as ``stop_mask.nii.gz``).
    seeds_per_voxel : int, optional
        Random seeds per mask voxel (default: the rule's; DDTracking's from its weights).
    shell, lmax : optional
        The CSD fit's shell (default: the highest) and lmax (default 8), for det, prob and the
        fODF guide. DDTracking alone, with neither given: the highest shell with the directions
        for lmax 6 or more, at the highest order up to 8 they allow.
    peaks : bool
        Also write the CSD peaks (``peaks.nii.gz``).
    fodf_guide : float, optional
        DDTracking: the weight of the CSD fODF's peaks in each step (0: the network alone;
        :mod:`~difftract.models.ddtracking.guide`); the fODF is fitted and written as for det.
        Default: the weight validated for the network (0.3 ``full``, 0.7 ``fast``, 0 for other
        weights); 0 without ``ddtracking``.
    matmul_dtype : {"float32", "bfloat16"}
        DDTracking: the dtype of its network's large products (``track --matmul-dtype``).
    symmetries : str
        DDTracking: the grid symmetries each step is averaged over (``track --symmetries``).
    """

    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    weights: Path | None = None
    model: str | None = None
    format: str = "trx"
    stop_mask: Path | None = None
    fa_threshold: float = 0.2
    seeds_per_voxel: int | None = None
    seed: int = 0
    min_len_mm: float = 20.0
    shell: float | None = None
    lmax: int | None = None
    peaks: bool = False
    fodf_guide: float | None = None
    matmul_dtype: str = "float32"
    symmetries: str = "none"
    zero_nonfinite: bool = False
    compute: Compute = field(default_factory=Compute)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must be distinct ones of {', '.join(METHODS)}, got {list(self.methods)}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if (self.weights is not None or self.model is not None) and "ddtracking" not in self.methods:
            raise ConfigError("--weights and --model apply only to --method ddtracking")
        check_model_choice(self.weights, self.model)
        if self.fodf_guide and "ddtracking" not in self.methods:
            raise ConfigError("--fodf-guide only applies to --method ddtracking")
        check_matmul_dtype(self.matmul_dtype, "ddtracking" in self.methods)
        check_symmetries(self.symmetries, "ddtracking" in self.methods)
        if self.fodf_guide:
            from ..models.ddtracking.guide import GuideConfig

            GuideConfig(weight=self.fodf_guide)     # refuses a weight outside [0, 1] before any fit
        # nothing reads --shell/--lmax for DDTracking alone, unguided (None: the network's weight, resolved())
        csd_given = self.shell is not None or self.lmax is not None
        if self.methods == ("ddtracking",) and self.fodf_guide == 0 and csd_given:
            raise ConfigError("--shell and --lmax set the CSD fit of --method det or prob, or of DDTracking's fODF "
                              "guide, which is off here (--fodf-guide 0, or weights with no validated guide: give "
                              "--fodf-guide W); DDTracking reads the SH (lmax 6) of the shell nearest b=1000, as it "
                              "was trained; for a scheme without such a shell use --method det or prob with "
                              "--shell/--lmax")
        if self.seeds_per_voxel is not None and self.seeds_per_voxel < 1:
            raise ConfigError(f"--seeds-per-voxel must be at least 1, got {self.seeds_per_voxel}")
        if not 0.0 <= self.fa_threshold < 1.0:
            raise ConfigError(f"--fa-threshold must be in [0, 1), got {self.fa_threshold}")

    def resolved(self, meta: dict | None = None) -> RunOptions:
        """These options with DDTracking's guide weight made explicit: where ``fodf_guide`` is None, the one
        validated for the network (weights metadata ``meta``, read from the weights when None). A run records
        the weight it used, so a later default cannot pass for it."""
        if self.fodf_guide is not None or "ddtracking" not in self.methods:
            return self
        from ..models.ddtracking.defaults import TrackingDefaults

        if meta is None:
            from ..models.ddtracking.getter import load_ddtracking

            meta = load_ddtracking(self.weights, self.model)[1]
        return replace(self, fodf_guide=TrackingDefaults.from_meta(meta).fodf_guide)

    def record(self) -> dict:
        """The options as plain values (``run.json``; a cohort compares them before skipping a subject).
        Without DDTracking ``fodf_guide`` is 0, as before the option had a default of its network's."""
        values = {k: v for k, v in asdict(self).items() if k != "compute"}
        if "ddtracking" not in self.methods:
            values["fodf_guide"] = 0.0
        values = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                  for k, v in values.items()}
        return {**values, **{k: str(v) for k, v in asdict(self.compute).items()}}

    def tracks_name(self, method: str) -> str:
        return f"tracks.{self.format}" if len(self.methods) == 1 else f"tracks_{method}.{self.format}"

    def scores_name(self, method: str) -> str:
        return "scores.json" if len(self.methods) == 1 else f"scores_{method}.json"
