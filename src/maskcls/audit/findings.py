"""Which labels are most likely wrong, from out-of-fold probabilities.

A finding is a label the model contradicts: its (pooled) most probable class is another one.
Three kinds, each scored by the model's probability that the given label is wrong, so that
kinds compare on one scale:

- ``person_<attribute>``: an attribute that every photo of a person shares (the competition's
  gender and age; any CSV attribute constant within each ``group``). The person's photos'
  out-of-fold probabilities of that attribute are averaged (the pooling of a TTA or fold
  ensemble) and the persons go through confident learning as examples. Score: 1 − pooled P(given).
- ``swap_incorrect_normal``: within a person with exactly one photo labelled "incorrect" and
  one labelled "not worn" (the competition's ``incorrect_mask`` and ``normal``), the first is
  predicted "not worn" and the second "incorrect". One finding, scored by the posterior of
  "swapped" against "as labelled": P₁(not worn)·P₂(incorrect) / (that + P₁(incorrect)·P₂(not worn)).
- ``image_<attribute>`` (``image_label`` for a task without attributes): single images, the
  swap's two photos excluded. Score: 1 − P(given).

``confident`` is cleanlab's confident-learning verdict (``find_label_issues``; scores from
``get_label_quality_scores``): its per-class thresholds — each class's average self-confidence —
keep a class the model under-predicts (the rare ">=60") from being judged by the same bar as a
common one. Findings rank confident first, then by score; the swap pattern counts as confident.
This module adds what only this field knows: persons, pooling, and the swap pattern.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from ..task import Task
from .inputs import AuditInput

log = logging.getLogger(__name__)

SWAP = "swap_incorrect_normal"
FINDING_COLUMNS = ["rank", "kind", "group", "field", "given", "suggested", "score", "confident", "p_given",
                   "p_suggested", "images", "fold", "files", "evidence"]
_MASK_INCORRECT, _MASK_NOT_WORN = 1, 2  # the competition's mask codes (labels.MASK_NAMES)


@dataclass(frozen=True)
class Verdict:
    """What the model says of one label: the given and suggested codes, the score, cleanlab's flag."""
    given: int
    suggested: int
    score: float
    confident: bool


@dataclass(frozen=True)
class Field:
    """One label dimension to audit: an attribute of the task, or the whole label of a plain task."""
    name: str
    classes: tuple[str, ...]
    codes: np.ndarray  # given code per row
    probs: np.ndarray  # (rows, len(classes)) marginal out-of-fold probabilities


def label_fields(task: Task, labels: np.ndarray, probs: np.ndarray) -> list[Field]:
    """Per-attribute marginals of the K-class probabilities (``label`` alone for a plain task)."""
    if not task.attributes:
        return [Field("label", task.class_names, np.asarray(labels), probs)]
    codes, marginals = task.split(np.asarray(labels)), task.marginals(probs)
    return [Field(a.name, a.classes, np.asarray(codes[a.name]), marginals[a.name]) for a in task.attributes]


def is_person_level(codes: np.ndarray, groups: np.ndarray) -> bool:
    """True when the code is the same for every photo of every group, and some group has several photos."""
    df = pd.DataFrame({"g": groups, "c": codes})
    per = df.groupby("g")["c"].agg(["nunique", "size"])
    return bool((per["nunique"] == 1).all() and (per["size"] > 1).any())


def confident_issues(codes: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident learning: (issue mask, label quality = P(given)) per example."""
    if len(codes) < 2 or len(np.unique(codes)) < 2:
        return np.zeros(len(codes), bool), probs[np.arange(len(codes)), codes]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # n_jobs=1: the arrays are small, and a process pool per call costs more than it saves.
        issues = find_label_issues(codes, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(codes, probs, method="self_confidence")
    for w in caught:
        log.debug("cleanlab: %s", w.message)
    return np.asarray(issues, bool), np.asarray(quality, np.float64)


def _evidence(classes: tuple[str, ...], p: np.ndarray) -> dict[str, float]:
    return {c: round(float(v), 4) for c, v in zip(classes, p)}


def person_findings(field: Field, rows: pd.DataFrame) -> list[dict]:
    """Persons whose pooled out-of-fold prediction of ``field`` contradicts their label (confident: cleanlab agrees)."""
    groups = rows["group"].to_numpy()
    keys, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys))
    pooled = np.zeros((len(keys), len(field.classes)))
    np.add.at(pooled, inverse, field.probs)
    pooled /= counts[:, None]
    given = np.zeros(len(keys), np.int64)
    given[inverse] = field.codes
    issues, quality = confident_issues(given, pooled)
    suggested = pooled.argmax(1)
    out = []
    for g in np.flatnonzero(suggested != given):
        members = np.flatnonzero(inverse == g)
        photos = {rows["path"].iat[i]: round(float(field.probs[i, suggested[g]]), 4) for i in members}
        verdict = Verdict(given[g], suggested[g], 1 - quality[g], issues[g])
        out.append(_finding(f"person_{field.name}", keys[g], field, verdict, pooled[g], rows.iloc[members],
                            {"pooled": _evidence(field.classes, pooled[g]),
                             f"photos: P({field.classes[suggested[g]]})": photos}))
    return out


def swap_findings(mask: Field, rows: pd.DataFrame) -> list[dict]:
    """Persons whose one 'incorrect' and one 'not worn' photo are predicted the other way round."""
    out = []
    for g, pos in rows.groupby("group", sort=True).indices.items():
        inc = pos[mask.codes[pos] == _MASK_INCORRECT]
        nrm = pos[mask.codes[pos] == _MASK_NOT_WORN]
        if len(inc) != 1 or len(nrm) != 1:
            continue  # the pairing is only unambiguous with one photo of each
        i, n = int(inc[0]), int(nrm[0])
        pi, pn = mask.probs[i], mask.probs[n]
        if pi.argmax() != _MASK_NOT_WORN or pn.argmax() != _MASK_INCORRECT:
            continue
        swapped = pi[_MASK_NOT_WORN] * pn[_MASK_INCORRECT]
        kept = pi[_MASK_INCORRECT] * pn[_MASK_NOT_WORN]
        score = swapped / max(swapped + kept, 1e-12)
        evidence = {rows["path"].iat[i]: _evidence(mask.classes, pi), rows["path"].iat[n]: _evidence(mask.classes, pn)}
        names = [PurePosixPath(rows["path"].iat[j]).name for j in (i, n)]
        c_inc, c_off = mask.classes[_MASK_INCORRECT], mask.classes[_MASK_NOT_WORN]
        given, suggested = f"{names[0]}: {c_inc}; {names[1]}: {c_off}", f"{names[0]}: {c_off}; {names[1]}: {c_inc}"
        out.append({"kind": SWAP, "group": g, "field": SWAP, "given": given, "suggested": suggested,
                    "score": float(score), "confident": True, "p_given": float(kept), "p_suggested": float(swapped),
                    "images": 2, "fold": int(rows["fold"].iat[i]),
                    "files": ";".join(rows["path"].iloc[[i, n]]), "evidence": json.dumps(evidence)})
    return out


def image_findings(field: Field, rows: pd.DataFrame, exclude: set[str]) -> list[dict]:
    """Single images whose ``field`` label the model contradicts (``confident``: cleanlab agrees)."""
    issues, quality = confident_issues(field.codes, field.probs)
    suggested = field.probs.argmax(1)
    paths = rows["path"].to_numpy()
    out = []
    for i in np.flatnonzero(suggested != field.codes):
        if paths[i] in exclude:
            continue
        verdict = Verdict(field.codes[i], suggested[i], 1 - quality[i], issues[i])
        out.append(_finding(f"image_{field.name}", rows["group"].iat[i], field, verdict, field.probs[i], rows.iloc[[i]],
                            {"probabilities": _evidence(field.classes, field.probs[i])}))
    return out


def _finding(kind: str, group: str, field: Field, v: Verdict, p: np.ndarray, members: pd.DataFrame,
             evidence: dict) -> dict:
    return {"kind": kind, "group": group, "field": field.name, "given": field.classes[v.given],
            "suggested": field.classes[v.suggested], "score": float(v.score), "confident": bool(v.confident),
            "p_given": float(p[v.given]),
            "p_suggested": float(p[v.suggested]), "images": len(members), "fold": int(members["fold"].iat[0]),
            "files": ";".join(members["path"]), "evidence": json.dumps(evidence)}


def find_issues(data: AuditInput) -> pd.DataFrame:
    """Every finding of the audit, ranked by score (rank 1 = most likely wrong); columns FINDING_COLUMNS."""
    rows = data.rows.reset_index(drop=True)
    fields = label_fields(data.task, rows["label"].to_numpy(), data.probs)
    groups = rows["group"].to_numpy()
    person_level = {f.name for f in fields if is_person_level(f.codes, groups)}
    found: list[dict] = []
    for f in fields:
        if f.name in person_level:
            found += person_findings(f, rows)
    swapped: set[str] = set()
    mask = next((f for f in fields if f.name == "mask" and len(f.classes) == 3), None)
    if mask is not None and "mask" not in person_level:
        swaps = swap_findings(mask, rows)
        found += swaps
        swapped = {p for s in swaps for p in s["files"].split(";")}
    for f in fields:
        if f.name not in person_level:
            found += image_findings(f, rows, swapped if f.name == "mask" else set())
    df = pd.DataFrame(found, columns=[c for c in FINDING_COLUMNS if c != "rank"])
    # Confident learning's flags first (class-calibrated thresholds), then the other contradictions.
    df = df.sort_values(["confident", "score", "kind", "group"], ascending=[False, False, True, True], kind="stable")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    log.info("audit: %d findings (%s)", len(df), df["kind"].value_counts().to_dict())
    return df.reset_index(drop=True)
