"""The trainer's files: weights (``W.pt``), checkpoint (``W.ckpt.pt``), metrics (``W.metrics.jsonl``).

Both ``.pt`` files are plain dicts of tensors and JSON-like values, readable with
``torch.load(..., weights_only=True)``; a foreign, truncated or newer file is an ``InputError``
naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..io.atomic import atomic_file

WEIGHTS_FORMAT, WEIGHTS_VERSION = "difftract-weights", 1
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "difftract-checkpoint", 1


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The weights file, its checkpoint and its metrics file: ``W.pt, W.ckpt.pt, W.metrics.jsonl``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out, out.with_name(f"{stem}.ckpt.pt"), out.with_name(f"{stem}.metrics.jsonl")


def subject_label(path: str | Path) -> str:
    """How a weights file names a training subject: never an absolute path.

    The subject's path relative to the current working folder when it lies inside it (so
    ``cd WORK && difftract train ... train/random_1001`` records ``train/random_1001``),
    otherwise only its folder name. Shipped weights thus carry no path of the machine that
    trained them.
    """
    full = Path(os.path.abspath(path))   # abspath, not resolve: a symlinked folder keeps its name
    try:
        rel = full.relative_to(os.path.abspath(os.getcwd()))
    except ValueError:
        return full.name
    return rel.as_posix() if rel.parts else full.name


def save_weights(path: str | Path, state_dict: dict[str, Tensor], meta: dict | None = None,
                 train_info: dict | None = None, force: bool = False) -> Path:
    """Write a weights file loadable with ``torch.load(path, weights_only=True)``.

    ``meta`` (how to rebuild the model) and ``train_info`` must be JSON-like.
    """
    meta, train_info = dict(meta or {}), dict(train_info or {})
    try:
        json.dumps([meta, train_info])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: weights metadata must be JSON-like (str, numbers, lists, dicts): {e}") from None
    payload = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "state_dict": cpu_state(state_dict),
               "meta": meta, "train": train_info}
    with atomic_file(path, force) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a weights file written by :func:`save_weights` (``weights_only=True``)."""
    payload = _load_torch(path, map_location, "weights file")
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT or "state_dict" not in payload:
        raise InputError(path, f"not a difftract weights file (no format {WEIGHTS_FORMAT!r})")
    if not isinstance(payload.get("version"), int) or payload["version"] > WEIGHTS_VERSION:
        raise InputError(path, f"weights format version {payload.get('version')!r} is not one this "
                               f"difftract reads ({WEIGHTS_VERSION}); upgrade difftract")
    return payload


def load_model(path: str | Path, name: str, title: str, build: Callable[[Any], nn.Module]) -> tuple[nn.Module, dict]:
    """A model rebuilt from a weights file whose ``meta["model"]`` is ``name``, and that meta.

    ``build(meta["config"])`` makes the network; a file of another model, or whose state
    does not fit the architecture it describes, is an ``InputError`` naming it (``title``
    is the model's name for people). The meta returned adds the file's path and SHA256.
    """
    from ..io.checksum import sha256

    digest = sha256(path) if Path(path).is_file() else None
    _check_against_sidecar(path, digest)
    blob = load_weights(path)
    meta = blob.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("model") != name:
        raise InputError(path, f"not {title} weights (model is {meta.get('model')!r})")
    try:
        model = build(meta["config"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"weights do not match the {title} architecture in the file: {exc}") from None
    return model, {**meta, "path": str(path), "sha256": digest}


def _check_against_sidecar(path: str | Path, digest: str | None) -> None:
    """Refuse weights whose training sidecar (``W.json``, written by ``difftract train``) lists another SHA256."""
    from ..io.sidecar import sidecar_path

    sidecar = sidecar_path(path)
    if digest is None or not sidecar.is_file():
        return
    try:
        listed = json.loads(sidecar.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return        # not a sidecar of ours: nothing to check against
    if isinstance(listed, str) and listed != digest:
        raise InputError(path, f"checksum mismatch: SHA256 {digest} but its sidecar {sidecar.name} lists {listed} "
                               "(the file is corrupt or was replaced; retrain it, or remove the stale sidecar)")


def cpu_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detached CPU copy of a state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _load_torch(path: str | Path, map_location, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in first.lower():   # torch's advice (weights_only=False) runs foreign code
            first = "it holds objects other than tensors and plain values, which difftract never loads"
        raise InputError(path, f"cannot read {what} (corrupt, or not written by difftract): {first}") from None


def load_checkpoint(path: Path, config: dict) -> dict:
    if not path.is_file():
        raise InputError(path, "cannot resume: checkpoint not found (start without resume)")
    ckpt = _load_torch(path, "cpu", "training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a difftract training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint version {ckpt.get('version')!r} is not one this difftract reads")
    saved, now = ckpt["config"], config
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k != "epochs" and saved.get(k) != v]
    if changed:
        raise ConfigError(f"{path}: cannot resume with a different training configuration "
                          f"(only epochs may change): {'; '.join(changed)}")
    return ckpt


def write_training_sidecar(out: str | Path, command: str, meta: dict, config, result, *, seed: int,
                           subjects: list[Path] = (), stream: dict | None = None) -> None:
    """``W.json`` beside the weights ``out``: what was trained on, how, the outcome and the weights' SHA256."""
    import dataclasses

    from ..io.sidecar import provenance, write_sidecar
    from ..io.checksum import sha256

    inputs = [Path(d) / "dwi.nii.gz" for d in subjects if (Path(d) / "dwi.nii.gz").exists()]
    extra = {} if stream is None else {"stream": stream}
    record = provenance(command, {**meta, "train": dataclasses.asdict(config)}, seed=seed, inputs=inputs,
                        weights_sha256=sha256(out), **extra,
                        result={"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                                "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early})
    write_sidecar(out, record, force=True)

