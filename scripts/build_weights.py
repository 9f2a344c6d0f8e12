"""Rebuild a shipped weights file from the repository: simulate its training phantoms, train, install.

    python scripts/build_weights.py qcgdti --install        # src/difftract/weights/qcgdti.pt
    python scripts/build_weights.py qcgdti_phantoms         # the earlier QCG-DTI, the start of qcgdti
    python scripts/build_weights.py ddtracking --install    # src/difftract/weights/ddtracking.pt
    python scripts/build_weights.py ddtracking_fast --install   # the small CPU model, ddtracking_fast.pt
    python scripts/build_weights.py qcgdti --quick          # the same flow, tiny sizes (minutes)
    python scripts/build_weights.py ddtracking_phantoms     # the earlier DDTracking weights (not installed)
    python scripts/build_weights.py ddtracking_fast_fodf    # the input ablation: the CSD fODF (not installed)
    python scripts/build_weights.py qcgdti_paper            # the paper's QCG-DTI, no least-squares input (not installed)

The DDTracking recipes train on streamed phantoms (``--stream``): no phantom step, the
subjects are simulated beside the training into ``WORK/NAME/full.stream/``, and one run gives
the weights. ``qcgdti`` also streams, and starts (``--init``) from the ``qcgdti_phantoms``
build, which it runs first in the same work folder.

Everything is written under the work folder (default: ``build/weights`` in the repository,
``build/weights-quick`` with ``--quick``; ``build/`` is git-ignored). The commands run inside
it, so the weights record their subjects as ``train/<preset>_<seed>``, never an absolute path;
each command is echoed and appended to ``WORK/commands.sh``. Re-running continues where a run
stopped: finished phantoms are kept, finished trainings skipped, an interrupted training
resumed from its checkpoint (``--resume`` is exact). The models share ``WORK/train``.

``--install`` re-saves the result as ``src/difftract/weights/NAME.pt`` with ``meta["build"]``
naming this command, and rewrites only that file's line of ``SHA256SUMS``. ``--quick`` never
installs. ``--device cuda`` trains on a GPU (mixed precision there: weights close to, not equal
to, CPU-trained ones). The recipes (phantom seeds, SNR, schemes, training options) are those in
``src/difftract/weights/README.md``; the ablation variants are trained by
``scripts/train_ddtracking_ablation.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))   # this repository's difftract, whatever is installed

QCG_SCHEME = ["--bvals", "1000,2000,3000", "--ndirs", "90,60,60", "--nb0", "2"]


def _phantom(preset: str, seed: int, snr: float, scheme: list[str] = QCG_SCHEME) -> tuple[str, list[str]]:
    return f"{preset}_{seed}", ["--preset", preset, "--seed", str(seed), "--snr", f"{snr:g}", *scheme]


# every training phantom: folder name under WORK/train -> `difftract simulate` options
PHANTOMS = dict([
    *(_phantom("random", s, snr) for s, snr in zip(range(1001, 1007), (10, 15, 20, 30, 40, 20))),
    _phantom("fibercup", 1101, 15), _phantom("fibercup", 1102, 25), _phantom("random", 1201, 20),
    _phantom("random", 1301, 15, ["--bvals", "1000", "--ndirs", "32", "--nb0", "1"]),
    _phantom("random", 1302, 25, ["--bvals", "1500", "--ndirs", "64", "--nb0", "2"]),
    _phantom("random", 1303, 12, ["--bvals", "1000,2000", "--ndirs", "60,60", "--nb0", "3"]),
    _phantom("fibercup", 1103, 30, ["--bvals", "1000", "--ndirs", "64", "--nb0", "1"]),
])

# per model: training subjects (the last one validates), the options of both trainings, the
# epochs of the first run and of its --resume continuation (the weights), quick sizes; "train"
# names the `difftract train` model when it is not the recipe's own name; "install": False for a
# recipe that rebuilds no shipped file (the earlier DDTracking weights, and the ablation's data)
DD_SUBJECTS = ([f"random_{s}" for s in range(1001, 1007)] + [f"random_{s}" for s in range(1301, 1304)]
               + [f"fibercup_{s}" for s in range(1101, 1104)] + ["random_1201"])
DD_QUICK_SUBJECTS = ["random_1001", "random_1301", "fibercup_1101", "random_1201"]
# the fast CPU model: a 2 x 128 GRU, narrow spatial branches and denoiser (0.55 M parameters
# against 4.3 M)
DD_FAST_SIZES = ["--gru-hidden", "128", "--z-dim", "64", "--v-dim", "64", "--conv-channels", "16",
                 "--mlp-hidden", "128", "--denoiser-width", "32"]
DD_TINY_SIZES = ["--gru-hidden", "16", "--z-dim", "8", "--v-dim", "8", "--conv-channels", "4", "--denoiser-width", "8",
                 "--batch-size", "8", "--window", "12"]
# the shipped DDTracking files (issue 19): streamed phantoms, a new random or brain-random geometry
# every 3 epochs (8 per set), randomised tissue and acquisition (the shell nearest b = 1000 that
# the network reads keeps 30-90 directions, as its lmax 6 SH fit needs), 1.75-2.5 mm voxels,
# the 48 grid symmetries; two held-back stream seeds validate
DD_STREAM = ["--stream", "random,brain-random", "--phantom", "randomize=true", "--phantom",
             'acquisition_ranges={"bvals":[700,3000],"ndirs":[30,90],"shells":[1,2],"voxel_size":[1.75,2.5]}',
             "--subjects-per-epoch", "8", "--epochs-per-subject", "3", "--val-subjects", "2", "--stream-workers", "2",
             "--augment", "--variant", "full", "--samples-per-epoch", "1000", "--val-samples", "256", "--lr", "3e-4",
             "--patience", "15", "--seed", "0"]
DD_STREAM_QUICK = ["--stream", "random", "--phantom", "randomize=true", "--phantom",
                   'acquisition_ranges={"ndirs":[30,40],"shells":[1,1],"voxel_size":[2.5,2.5]}',
                   "--subjects-per-epoch", "2", "--epochs-per-subject", "1", "--val-subjects", "1",
                   "--stream-workers", "0", "--augment", "--variant", "full", "--samples-per-epoch", "16",
                   "--val-samples", "8", "--lr", "3e-4", "--seed", "0", *DD_TINY_SIZES]
# the shipped QCG-DTI (issue 20): the earlier network (the qcgdti_phantoms recipe, 24 epochs on nine
# phantoms of one tissue) with an anisotropy-gain branch (the calibration form: a per-voxel function
# of the network's and the least-squares tensor's FA and MD, b, the b0 and the patch's SNR) and an
# MD-gain branch of the same inputs, both trained alone on streamed random and brain-random
# subjects of randomised tissue and acquisition with Rician noise (the calibration cannot tell a
# multi-coil noise floor from tissue), against the noise-free tensor of the six DWIs' shell (MD, FA
# and orientation as separate terms); two held-back stream seeds validate
QCG_STREAM = ["--stream", "random,brain-random", "--phantom", "randomize=true", "--phantom",
              'acquisition_ranges={"bvals":[500,3000],"ndirs":[60,90],"shells":[1,3],"voxel_size":[2.0,2.5],'
              '"rician_probability":1.0}',
              "--phantom", 'tissue_ranges={"d_par":[1.0e-3,2.4e-3],"perp_ratio":[0.05,0.9],"f_intra":[0.2,0.85],'
              '"kappa":[1.0,100.0],"f_free":[0.0,0.5]}',
              "--subjects-per-epoch", "4", "--epochs-per-subject", "3", "--val-subjects", "2", "--val-samples", "32",
              "--plateau-patience", "8", "--samples-per-epoch", "64", "--batch-size", "2", "--lr", "3e-3",
              "--patience", "20", "--loss", "decomposed", "--widths", "8,16,32", "--patch", "32", "--anisotropy-gain",
              "--gain-input", "calibration", "--md-gain", "--target", "shell", "--gain-only", "--seed", "0"]
QCG_STREAM_QUICK = ["--stream", "random", "--phantom", "randomize=true", "--phantom",
                    'acquisition_ranges={"ndirs":[60,60],"shells":[1,1],"voxel_size":[2.5,2.5]}',
                    "--subjects-per-epoch", "2", "--epochs-per-subject", "1", "--val-subjects", "1",
                    "--stream-workers", "0", "--samples-per-epoch", "4", "--val-samples", "2", "--patch", "16",
                    "--loss", "decomposed", "--widths", "4,8", "--anisotropy-gain", "--gain-input", "calibration",
                    "--md-gain", "--target", "shell", "--gain-only", "--seed", "0"]
RECIPES = {
    "qcgdti": {"init": "qcgdti_phantoms", "subjects": [], "options": QCG_STREAM, "epochs": (30, 30),
               "quick_subjects": [], "quick_options": QCG_STREAM_QUICK},
    # the QCG-DTI shipped before issue 20, and the start of the one shipped now
    "qcgdti_phantoms": {
        "train": "qcgdti", "install": False,
        "subjects": [f"random_{s}" for s in range(1001, 1007)] + ["fibercup_1101", "fibercup_1102", "random_1201"],
        "options": ["--variant", "full", "--samples-per-epoch", "50", "--widths", "8,16,32", "--val-samples", "16",
                    "--patch", "32", "--seed", "0"],
        "epochs": (14, 24),
        "quick_subjects": ["random_1001", "fibercup_1101", "random_1201"],
        "quick_options": ["--variant", "full", "--samples-per-epoch", "4", "--widths", "4,8", "--val-samples", "2",
                          "--patch", "16", "--seed", "0"],
    },
    "ddtracking": {"train": "ddtracking", "subjects": [], "options": DD_STREAM, "epochs": (50, 50),
                   "quick_subjects": [], "quick_options": DD_STREAM_QUICK},
    "ddtracking_fast": {"train": "ddtracking", "subjects": [], "options": [*DD_STREAM, *DD_FAST_SIZES],
                        "epochs": (59, 59), "quick_subjects": [], "quick_options": DD_STREAM_QUICK},
    # the DDTracking weights shipped before issue 19 (13 fixed phantoms, default tissue; see the
    # weights README's History), at the paper's and at the fast sizes; the ablation's data
    "ddtracking_phantoms": {
        "train": "ddtracking", "install": False,
        "subjects": DD_SUBJECTS,
        "options": ["--variant", "full", "--samples-per-epoch", "1000", "--val-samples", "256", "--lr", "3e-4",
                    "--cache-dir", "cache", "--seed", "0"],
        "epochs": (20, 40),
        "quick_subjects": DD_QUICK_SUBJECTS,
        "quick_options": ["--variant", "full", "--samples-per-epoch", "16", "--val-samples", "8", "--lr", "3e-4",
                          "--cache-dir", "cache", "--seed", "0", *DD_TINY_SIZES],
    },
}
RECIPES["ddtracking_fast_phantoms"] = {**RECIPES["ddtracking_phantoms"],
                                       "options": [*RECIPES["ddtracking_phantoms"]["options"], *DD_FAST_SIZES]}
# issue 19's input ablation: the same streamed recipes on the CSD fODF instead of the signal SH
# (the same subjects and seeds; not shipped, see the weights README)
for name in ("ddtracking", "ddtracking_fast"):
    RECIPES[f"{name}_fodf"] = {**RECIPES[name], "install": False,
                               "options": [*RECIPES[name]["options"], "--input", "fodf"],
                               "quick_options": [*RECIPES[name]["quick_options"], "--input", "fodf"]}
# issue 19's step ablation: the streamed recipes trained (and so tracked) at half a voxel, with
# the drift-teaching offsets as they are (0.3 voxels) and halved with the step (the samples then
# equal the 1-voxel recipe's in units of the step); the noise-free fibre directions lose 0.08 in
# NC from 1-voxel to 1-mm steps (README; not shipped)
for name in ("ddtracking", "ddtracking_fast"):
    for suffix, extra in (("halfstep", ["--step", "0.5"]), ("halfstep_jitter", ["--step", "0.5", "--jitter", "0.15"])):
        RECIPES[f"{name}_{suffix}"] = {**RECIPES[name], "install": False,
                                       "options": [*RECIPES[name]["options"], *extra],
                                       "quick_options": [*RECIPES[name]["quick_options"], *extra]}
# issue 19's equivariance fine-tuning: the shipped `full` network trained on for 12 epochs on new streamed
# subjects (stream base 1) at a third of its learning rate, with the equivariance penalty
# (models/ddtracking/consistency.py) and without it (the control: the same epochs, subjects and seeds);
# not shipped unless validation picks it (README)
def _replaced(options: list[str], **values: str) -> list[str]:
    """``options`` with the value after each ``--NAME`` (underscores for dashes) replaced."""
    out = list(options)
    for name, value in values.items():
        out[out.index("--" + name.replace("_", "-")) + 1] = value
    return out


DD_FINETUNE = [*_replaced(DD_STREAM, lr="1e-4"), "--stream-base", "1", "--init", "full"]
# (--quick trains the tiny sizes, which the shipped weights do not fit: its runs start afresh)
for name, extra in (("ddtracking_finetune", []), ("ddtracking_equivariant", ["--equivariance", "5"])):
    RECIPES[name] = {"train": "ddtracking", "install": False, "subjects": [], "options": [*DD_FINETUNE, *extra],
                     "epochs": (12, 12), "quick_subjects": [], "quick_options": [*DD_STREAM_QUICK, *extra]}
# issue 20's architecture ablation: the paper's network (no least-squares tensor in its last layer,
# no gain branches), otherwise the qcgdti_phantoms recipe: the same phantoms, seeds and epochs
# (not shipped; the README's QCG-DTI section)
RECIPES["qcgdti_paper"] = {**RECIPES["qcgdti_phantoms"],
                           "options": [*RECIPES["qcgdti_phantoms"]["options"], "--no-lsq-input"],
                           "quick_options": [*RECIPES["qcgdti_phantoms"]["quick_options"], "--no-lsq-input"]}
QUICK_EPOCHS = (1, 2)


def build_command(model: str) -> str:
    return f"python scripts/build_weights.py {model} --install"


def quick_simulate_options(options: list[str]) -> list[str]:
    """The same phantom with 20 streamlines per bundle (QCG-DTI needs the ~60 directions per shell)."""
    return [*options, "--streamlines-per-bundle", "20"]


class Builder:
    def __init__(self, work: Path, device: str, dry_run: bool = False):
        self.work, self.device, self.dry_run = work, device, dry_run
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}

    def run(self, args: list[str]) -> None:
        """``difftract ARGS`` inside the work folder (echoed, and logged to WORK/commands.sh)."""
        line = shlex.join(["difftract", *args])
        print(f"+ (cd {self.work} && {line})", flush=True)
        with open(self.work / "commands.sh", "a") as log:
            log.write(line + "\n")
        if self.dry_run:
            return
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "difftract", *args], cwd=self.work, env=self.env)
        if done.returncode:
            raise SystemExit(f"build_weights: failed (exit {done.returncode}): {line}; re-run to continue")
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)

    def note(self, line: str) -> None:
        print(f"+ {line}", flush=True)
        with open(self.work / "commands.sh", "a") as log:
            log.write(line + "\n")

    def phantoms(self, names: list[str], quick: bool) -> list[str]:
        subjects = []
        for name in names:
            options = quick_simulate_options(PHANTOMS[name]) if quick else PHANTOMS[name]
            rel = f"train/{name}"
            if (self.work / rel).is_dir():   # `simulate` writes the folder atomically: present means complete
                print(f"  {rel}: done", flush=True)
            else:
                self.run(["-q", "simulate", rel, *options])
            subjects.append(rel)
        return subjects

    def train(self, model: str, subjects: list[str], options: list[str], out: str, epochs: int,
              continues: bool = False) -> None:
        """``difftract train MODEL`` to ``epochs``: skipped when done, resumed from its checkpoint if started.

        ``continues``: the run starts from a checkpoint copied into place (always ``--resume``).
        """
        from difftract.training.files import load_weights, output_paths

        weights, ckpt, _ = output_paths(self.work / out)
        args = ["-q", "train", model, *subjects, "--out", out, "--epochs", str(epochs), *options,
                "--device", self.device]
        if weights.exists():
            done = load_weights(weights).get("train", {}).get("config", {}).get("epochs")
            if done != epochs:
                raise SystemExit(f"{weights} was trained to {done} epochs, not {epochs}: remove it, or use "
                                 "another --work")
            print(f"  {out}: done", flush=True)
        elif ckpt.exists() or continues:
            self.run([*args, "--resume"])
        else:
            self.run([*args, "--force"])   # --force: only leftovers of a run killed in its first epoch


def build(model: str, work: Path, quick: bool, device: str, dry_run: bool = False) -> Path:
    """Simulate, train and continue; the final weights file."""
    recipe = RECIPES[model]
    work.mkdir(parents=True, exist_ok=True)
    mode_file, mode = work / "build.json", {"quick": quick}
    if mode_file.exists() and json.loads(mode_file.read_text()) != mode:
        raise SystemExit(f"{work} holds a {'quick' if not quick else 'full'} build: use another --work")
    mode_file.write_text(json.dumps(mode) + "\n")
    b = Builder(work, device, dry_run)
    b.note(f"# {model}{' (quick)' if quick else ''}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    subjects = b.phantoms(recipe["quick_subjects"] if quick else recipe["subjects"], quick)
    options = recipe["quick_options"] if quick else recipe["options"]
    first, last = recipe["epochs"]
    if quick:   # the same flow in miniature: one run, or a run and its continuation
        first, last = QUICK_EPOCHS if first != last else QUICK_EPOCHS[:1] * 2
    trainer = recipe.get("train", model)
    if "init" in recipe:    # a fine-tuning: the recipe it starts from is built first, in the same work folder
        start = build(recipe["init"], work, quick, device, dry_run)
        options = [*options, "--init", str(start.relative_to(work))]
    b.train(trainer, subjects, options, f"{model}/full.pt", first)
    if first == last:    # one run (the streamed recipes)
        return work / model / "full.pt"
    # the shipped weights: the same run continued with --resume to more epochs
    if not (work / model / "full_long.pt").exists() and not (work / model / "full_long.ckpt.pt").exists():
        for suffix in (".ckpt.pt", ".metrics.jsonl"):
            b.note(f"cp {model}/full{suffix} {model}/full_long{suffix}")
            if not dry_run:
                shutil.copyfile(work / model / f"full{suffix}", work / model / f"full_long{suffix}")
    b.train(trainer, subjects, options, f"{model}/full_long.pt", last, continues=True)
    return work / model / "full_long.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("model", choices=sorted(RECIPES))
    ap.add_argument("--work", type=Path, help="work folder (default: build/weights, build/weights-quick with --quick)")
    ap.add_argument("--install", action="store_true",
                    help="copy the result to src/difftract/weights and update its SHA256SUMS line")
    ap.add_argument("--quick", action="store_true",
                    help="tiny phantoms and models: checks the plumbing; never installs")
    ap.add_argument("--device", default="cpu", help="cpu (as the shipped weights), cuda or cuda:N (default: cpu)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = ap.parse_args(argv)
    if args.quick and args.install:
        ap.error("--quick builds are never installed")
    if args.install and not RECIPES[args.model].get("install", True):
        ap.error(f"{args.model} rebuilds no shipped file (earlier weights or an ablation); --install refused")
    work = (args.work or REPO / "build" / ("weights-quick" if args.quick else "weights")).absolute()
    t0 = time.perf_counter()
    result = build(args.model, work, args.quick, args.device, args.dry_run)
    minutes = (time.perf_counter() - t0) / 60
    if args.dry_run:
        return 0
    from difftract.training.files import load_weights

    info = load_weights(result).get("train", {})
    print(f"{args.model}: {result} (best validation loss {info.get('best_val_loss', float('nan')):.4g} at epoch "
          f"{info.get('best_epoch')} of {info.get('epochs_run')}); {minutes:.1f} minutes; work folder {work} "
          f"(commands in {work / 'commands.sh'})")
    if args.install:
        from difftract import weights as W

        digest = W.install(result, args.model, {"build": build_command(args.model)})
        print(f"installed {W.WEIGHTS_DIR / W.SHIPPED[args.model]} (SHA256 {digest}; {W.SUMS} updated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
