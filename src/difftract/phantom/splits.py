"""Which simulated subjects may be trained on, and which are kept for testing.

A learned model is judged on what it never saw. Phantom seeds are split once, here, for
every script and command: seeds below :data:`TEST_SEED_START` may be used for training
and validation; seeds from it on are test subjects, and training refuses them. The
geometry of the ``random`` and ``brain-random`` presets follows the seed, so a test seed
is also an unseen geometry, as it is for ``fibercup-moved`` (FiberCup's bundles moved by the
seed). Fixed-geometry presets (``fibercup``, ``crossing``, ``brain``) are "seen geometry"
for any model trained on them, whatever the seed.

Streams of fresh subjects for training (:func:`training_seed`) are laid out so that ranks
and epochs never overlap and never reach the test range.

A phantom directory carries its seed in ``dwi.json`` (the provenance written with it), so
the training commands check every subject directory with :func:`check_training_subject`;
a phantom marked ``"test_data": true`` there (e.g. a foreign-signal test phantom) is
refused whatever its seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

TEST_SEED_START = 9000            # seeds >= this: test subjects only
STREAM_SEED_START = 100_000_000   # fresh training subjects are drawn from here ...
STREAM_SEED_STOP = 2**62          # ... to here (far from the hand-picked seeds below 9000)
# Each stream base owns a block: training subjects first, then its validation subjects.
STREAM_VALIDATION_OFFSET = 1_000_000_000   # training subjects of a base (all ranks together)
MAX_VALIDATION_SUBJECTS = 3000
STREAM_BASE_STRIDE = STREAM_VALIDATION_OFFSET + MAX_VALIDATION_SUBJECTS


def is_test_seed(seed: int) -> bool:
    """True for a phantom seed reserved for evaluation."""
    return TEST_SEED_START <= int(seed) < STREAM_SEED_START


def check_training_seed(seed: int, what: str = "training subject") -> None:
    """Raise when a test seed would be trained on."""
    if is_test_seed(seed):
        raise ConfigError(f"{what} uses phantom seed {seed}, which is reserved for testing "
                          f"(seeds {TEST_SEED_START}..{STREAM_SEED_START - 1}); pick a seed below {TEST_SEED_START}")


def training_seed(base: int, index: int, rank: int = 0, world_size: int = 1) -> int:
    """Seed of fresh training subject ``index`` for ``rank`` of ``world_size``.

    Subjects are interleaved across ranks (rank r takes indices r, r + W, ...) so that no
    two ranks ever simulate the same subject, and ``base`` separates independent runs.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside a world of size {world_size}")
    if base < 0 or index < 0:
        raise ConfigError(f"base and index must be non-negative, got {base} and {index}")
    slot = int(index) * world_size + rank
    if slot >= STREAM_VALIDATION_OFFSET:   # beyond: the base's validation seeds
        raise ConfigError(f"stream subject {index} (rank {rank} of {world_size}) is beyond the "
                          f"{STREAM_VALIDATION_OFFSET:,} training subjects of a stream base; use another --stream-base")
    seed = STREAM_SEED_START + int(base) * STREAM_BASE_STRIDE + slot
    if seed >= STREAM_SEED_STOP:
        raise ConfigError(f"stream seed base {base} is too large")
    return seed


def validation_seed(base: int, index: int) -> int:
    """Seed of held-back validation subject ``index`` (< MAX_VALIDATION_SUBJECTS) of stream ``base``.

    It lies in the base's block above every seed :func:`training_seed` gives for fewer
    than a billion subjects, so a streamed run never trains on its own validation
    subjects, and it is never a test seed.
    """
    if not 0 <= index < MAX_VALIDATION_SUBJECTS:
        raise ConfigError(f"validation subject index must be in 0..{MAX_VALIDATION_SUBJECTS - 1}, got {index}")
    return training_seed(base, 0) + STREAM_VALIDATION_OFFSET + int(index)


def check_training_subject(directory: str | Path) -> None:
    """Raise when a subject directory is a test phantom (test seed, or marked as test data).

    Only difftract's own provenance is read: a ``dwi.json`` without ``difftract_version``
    (a scanner's BIDS sidecar, say) or no ``dwi.json`` at all means real data, which
    carries no split.
    """
    sidecar = Path(directory) / "dwi.json"
    if not sidecar.is_file():
        return
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{sidecar}: cannot read the phantom's provenance ({e})") from None
    if not isinstance(record, dict) or "difftract_version" not in record:
        return
    if record.get("test_data") is True:
        raise ConfigError(f"training subject {directory} is test data ({sidecar} says test_data: true); "
                          "train on phantoms simulated with a training seed")
    seed = record.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        check_training_seed(seed, what=f"training subject {directory}")
