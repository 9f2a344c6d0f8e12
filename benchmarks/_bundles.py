"""Bundles found and bundles missed: the two parts of a row's F1 margin (bench_ddtracking).

scilpy's Tractometer scores a bundle without a valid streamline as zeros, and its mean F1
counts it: a row that misses one bundle of seven loses about a seventh of its F1, whatever
it made of the other six. Whether a hard bundle (one crossing another at 45 degrees where
it holds a small fraction of the signal, one lying mostly inside others) gets a single valid
streamline out of thousands of seeds can so be worth more F1 than how well every other
bundle is reconstructed, and it is close to chance: a rule that finds a hard bundle with one
streamline in one run may miss it in the next.

These functions split a row's F1 margin over a classical row into the two:

- the bundles each row missed where the other found one (:func:`missed_bundles`);
- the margin on the bundles both found (:func:`common_f1_margin`), which measures how well
  the row reconstructs a bundle once it has one.

They read the per-bundle entries :func:`bundle_entries` keeps of a Tractometer result.
"""

from __future__ import annotations

import numpy as np


def bundle_entries(scores: dict) -> dict[str, dict]:
    """Per bundle of a :func:`difftract.eval.tractometer.score` result: its VS count and its F1 (bundles without
    a ground-truth mask, which score no F1, left out)."""
    return {name: {"VS": int(b["VS"]), "f1": float(b["f1"])}
            for name, b in scores["bundle_wise"].items() if name != "IB" and "f1" in b}


def _common_means(phantoms: list[dict[str, dict]], row: str, other: str) -> tuple[float, float] | None:
    """Mean over ``phantoms`` of each row's mean F1 over the bundles both found (phantoms with none skipped)."""
    ours, theirs = [], []
    for rules in phantoms:
        a, b = rules[row]["bundle_wise"], rules[other]["bundle_wise"]
        common = [name for name in a if a[name]["VS"] > 0 and b[name]["VS"] > 0]
        if common:
            ours.append(np.mean([a[name]["f1"] for name in common]))
            theirs.append(np.mean([b[name]["f1"] for name in common]))
    return (float(np.mean(ours)), float(np.mean(theirs))) if ours else None


def common_f1_margin(tables: dict[str, dict[str, dict]], row: str, classical: list[str],
                     columns: list[str]) -> dict[str, dict]:
    """Per column, ``row``'s F1 margin on the bundles it and a classical row both found.

    ``tables[column][phantom][rule]`` holds each row's ``bundle_wise`` (:func:`bundle_entries`).
    Each classical row is compared on the bundles it shares with ``row`` (sets that differ
    from row to row), and the smallest margin is kept: the hardest comparison, as the F1
    target takes the column's best classical row. Returns ``{column: {"margin", "against",
    "row_f1", "classical_f1"}}`` for the columns where some phantom has bundles in common.
    """
    out = {}
    for column in columns:
        phantoms = [rules for rules in tables.get(column, {}).values()
                    if row in rules and all(rule in rules for rule in classical)]
        pairs = {rule: _common_means(phantoms, row, rule) for rule in classical}
        pairs = {rule: p for rule, p in pairs.items() if p is not None}
        if pairs:
            best = min(pairs, key=lambda rule: pairs[rule][0] - pairs[rule][1])
            ours, theirs = pairs[best]
            out[column] = {"margin": ours - theirs, "against": best, "row_f1": ours, "classical_f1": theirs}
    return out


def missed_bundles(rules: dict[str, dict], row: str, classical: list[str]) -> dict[str, dict[str, list[str]]]:
    """On one phantom: the bundles ``row`` missed that a classical row found, and the reverse, per classical row."""
    ours = rules[row]["bundle_wise"]
    out = {}
    for rule in classical:
        theirs = rules[rule]["bundle_wise"]
        out[rule] = {"row_missed": [n for n in ours if ours[n]["VS"] == 0 and theirs[n]["VS"] > 0],
                     "classical_missed": [n for n in ours if theirs[n]["VS"] == 0 and ours[n]["VS"] > 0]}
    return out
