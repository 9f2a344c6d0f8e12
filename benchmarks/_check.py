"""Targets of a benchmark, declared once and checked under ``--check``.

Each ``bench_*.py`` declares its targets up front (a list of :class:`Target`: name, comparison,
threshold, where the target comes from, and whether it is hard), parses its arguments with
:func:`parse_args` (which adds ``--check`` and ``--target NAME=VALUE`` and lists the targets in
``--help``), records every figure it measures with :meth:`Check.measure`, and ends with
:meth:`Check.finish`, which prints a PASS/MISS table, adds the targets and their outcomes to
the benchmark's JSON object (still the last stdout line) and exits.

Outcomes:

- ``pass`` / ``miss``: the measured value against the threshold;
- ``unmeasured``: the value (or the reference it needs: DIPY's run, a row, a weights file)
  could not be measured; the reason is printed. A declared target the benchmark never
  reached is unmeasured too, so a row cannot be dropped silently;
- ``skipped``: the settings asked not to measure it (``--quick`` without the million-seed run,
  no ``--weights-dir``); the reason is printed and it does not fail.

Exit status: without ``--check`` always 0 (a crash still exits non-zero). With ``--check``, 1
when a hard target is missed or any declared target is unmeasured; a soft target's miss is
printed as ``MISS (soft)`` and does not fail. ``--target NAME=VALUE`` replaces a target's
threshold (``LO,HI`` for a range, ``true``/``false`` for an equality on a flag) and makes it
hard, e.g. to show that an impossible target fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace

OPS = {
    ">=": lambda v, t: v >= t,
    ">": lambda v, t: v > t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    "==": lambda v, t: v == t,
    "range": lambda v, t: t[0] <= v <= t[1],
    "measured": lambda v, t: True,          # a row that must exist; its value is only reported
}


@dataclass(frozen=True)
class Target:
    """``value OP threshold``; ``source`` says where the project states it; soft targets only warn."""

    name: str
    op: str
    threshold: object = None
    source: str = ""
    hard: bool = True

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"target {self.name}: unknown comparison {self.op!r}")

    def required(self) -> str:
        if self.op == "range":
            return f"in [{_fmt(self.threshold[0])}, {_fmt(self.threshold[1])}]"
        if self.op == "measured":
            return "measured"
        return f"{self.op} {_fmt(self.threshold)}"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _parse_threshold(target: Target, text: str):
    text = text.strip()
    if target.op == "measured":
        raise ValueError("a 'measured' target has no threshold")
    if target.op == "range":
        lo, hi = (float(x) for x in text.split(","))
        return (lo, hi)
    if isinstance(target.threshold, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    return float(text)


def targets_help(targets: list[Target]) -> str:
    width = max(len(t.name) for t in targets)
    lines = ["targets (--check exits 1 when a hard one is missed or any is unmeasured; "
             "--target NAME=VALUE replaces a threshold):"]
    for t in targets:
        lines.append(f"  {t.name:{width}}  {t.required():18} {'hard' if t.hard else 'soft'}  {t.source}")
    return "\n".join(lines)


def add_check_arguments(parser: argparse.ArgumentParser, targets: list[Target]) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ((parser.epilog + "\n\n") if parser.epilog else "") + targets_help(targets)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a hard target is missed or a target could not be measured")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                        help="replace a target's threshold (LO,HI for a range; true/false for a flag) and "
                             "make it hard; repeatable. The targets are listed below")


def parse_args(parser: argparse.ArgumentParser, benchmark: str, targets: list[Target],
               argv: list[str] | None = None) -> tuple[argparse.Namespace, "Check"]:
    """Add ``--check``/``--target``, parse, and return the arguments with the benchmark's :class:`Check`."""
    add_check_arguments(parser, targets)
    args = parser.parse_args(argv)
    try:
        check = Check(benchmark, targets, overrides=args.target, enabled=args.check)
    except ValueError as e:
        parser.error(str(e))
    return args, check


class Check:
    """The outcome of each declared target of one run."""

    def __init__(self, benchmark: str, targets: list[Target], overrides: list[str] = (), enabled: bool = False):
        self.benchmark, self.enabled = benchmark, enabled
        self.targets = {t.name: t for t in targets}
        if len(self.targets) != len(targets):
            raise ValueError(f"{benchmark}: duplicate target names")
        self.overridden: dict[str, object] = {}
        for item in overrides:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in self.targets:
                raise ValueError(f"--target {item!r}: expected NAME=VALUE with NAME one of "
                                 f"{', '.join(self.targets)}")
            t = self.targets[name]
            try:
                threshold = _parse_threshold(t, text)
            except ValueError as e:
                raise ValueError(f"--target {item!r}: {e}") from None
            self.overridden[name] = t.threshold
            self.targets[name] = replace(t, threshold=threshold, hard=True,
                                         source=f"--target override (declared {t.required()}; {t.source})")
        self.outcomes: dict[str, dict] = {}

    # recording -------------------------------------------------------------------------------
    def _set(self, name: str, outcome: dict) -> None:
        if name not in self.targets:
            raise KeyError(f"{self.benchmark}: no target named {name!r}")
        if name in self.outcomes:
            raise ValueError(f"{self.benchmark}: target {name!r} recorded twice")
        self.outcomes[name] = outcome

    def measure(self, name: str, value) -> None:
        """Record a measured value (None or NaN: unmeasured)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.unmeasured(name, "no value (None/NaN)")
            return
        if hasattr(value, "item"):                 # numpy / torch scalars
            value = value.item()
        if name not in self.targets:
            raise KeyError(f"{self.benchmark}: no target named {name!r}")
        t = self.targets[name]
        ok = bool(OPS[t.op](value, t.threshold))
        self._set(name, {"status": "pass" if ok else "miss", "value": value, "reason": None})

    def unmeasured(self, name: str, reason: str) -> None:
        """The value, or the reference it needs, could not be measured: a miss under ``--check``."""
        print(f"[check] {name}: not measured: {reason}", flush=True)
        self._set(name, {"status": "unmeasured", "value": None, "reason": reason})

    def skip(self, name: str, reason: str) -> None:
        """The settings of this run do not measure it (not a failure)."""
        self._set(name, {"status": "skipped", "value": None, "reason": reason})

    def pending(self, name: str) -> bool:
        return name not in self.outcomes

    @contextmanager
    def measuring(self, *names: str, what: str = "measurement"):
        """Run a block; if it raises, the named targets not yet recorded are unmeasured (with the error)."""
        try:
            yield
        except Exception as e:                     # noqa: BLE001 - the reason is printed and recorded
            reason = f"{what} failed: {type(e).__name__}: {e}"
            for name in names:
                if self.pending(name):
                    self.unmeasured(name, reason)

    # outcome -----------------------------------------------------------------------------------
    def results(self) -> list[dict]:
        out = []
        for name, t in self.targets.items():
            o = self.outcomes.get(name) or {"status": "unmeasured", "value": None,
                                            "reason": "not measured: the benchmark did not reach it"}
            threshold = list(t.threshold) if isinstance(t.threshold, tuple) else t.threshold
            out.append({"name": name, "op": t.op, "threshold": threshold, "hard": t.hard, "source": t.source,
                        "value": o["value"], "status": o["status"], "reason": o["reason"]})
        return out

    @staticmethod
    def failed(results: list[dict]) -> list[str]:
        return [r["name"] for r in results
                if r["status"] == "unmeasured" or (r["status"] == "miss" and r["hard"])]

    def table(self, results: list[dict]) -> str:
        width = max([len(r["name"]) for r in results] + [6])
        labels = {"pass": "PASS", "miss": "MISS", "unmeasured": "UNMEASURED", "skipped": "skipped"}
        lines = [f"targets of {self.benchmark}:", f"  {'status':12} {'target':{width}} {'value':>10}  required"]
        for r in results:
            label = labels[r["status"]] + (" (soft)" if r["status"] == "miss" and not r["hard"] else "")
            t = self.targets[r["name"]]
            line = f"  {label:12} {r['name']:{width}} {_fmt(r['value']):>10}  {t.required()}"
            if r["reason"]:
                line += f"  ({r['reason']})"
            lines.append(line)
        return "\n".join(lines)

    def finish(self, figures: dict) -> None:
        """Print the table and the JSON line (last), then exit: 1 under --check when something failed."""
        results = self.results()
        failed = self.failed(results)
        print(self.table(results))
        counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "miss", "unmeasured", "skipped")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if failed:
            verdict = (f"FAILED: {', '.join(failed)}" + ("" if self.enabled else " (not fatal without --check)"))
        else:
            notes = [f"{counts['miss']} soft missed" if counts["miss"] else "",
                     f"{counts['skipped']} skipped by this run's settings" if counts["skipped"] else ""]
            notes = "; ".join(n for n in notes if n)
            verdict = f"no failures ({notes})" if notes else "all targets met"
        print(f"check: {summary}; {verdict}", flush=True)
        figures = dict(figures)
        figures.setdefault("benchmark", self.benchmark)
        figures["targets"] = results
        figures["check"] = {"enabled": self.enabled, "passed": not failed, "failed": failed,
                            "overridden": sorted(self.overridden)}
        print(json.dumps(figures, default=_json_default), flush=True)
        sys.exit(1 if (self.enabled and failed) else 0)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
