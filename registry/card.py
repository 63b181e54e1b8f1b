"""The parts of the model card (a version's Markdown description) that change after
registration, and the gate's audit summary.

``register`` writes the card once (pipelines/stages/register.py); its comparison with
the champion sits between two marker comments (``SECTION``), so that when ``champion``
moves the review gate can rewrite exactly that part, recomputed against the new champion
(registry.comparison), and leave the rest as it was. On a production version the gate
also keeps a summary of its own audit (``AUDIT``: who approved, when, why, the evidence
and the deploy state); the full log is the gate's append-only ``gate_audit`` table.
Pure: text in, text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.tagkeys import LineageTag
from registry.comparison import Comparison

SECTION = "vs-champion"  # this version beside the current champion
AUDIT = "gate-audit"  # production versions: the gate's record of what it did


def section(name: str, body: str) -> str:
    """``body`` between the markers of section ``name`` (HTML comments: not shown)."""
    return f"<!-- modelyard:{name} -->\n{body.strip()}\n<!-- /modelyard:{name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` holding ``body``; put first if it had none."""
    block = section(name, body)
    pattern = re.compile(
        rf"<!-- modelyard:{re.escape(name)} -->.*?<!-- /modelyard:{re.escape(name)} -->",
        re.DOTALL,
    )
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return f"{block}\n\n{text.lstrip()}" if text.strip() else block + "\n"


def section_body(text: str, name: str) -> str | None:
    found = re.search(
        rf"<!-- modelyard:{re.escape(name)} -->\n(.*?)\n<!-- /modelyard:{re.escape(name)} -->",
        text,
        re.DOTALL,
    )
    return found.group(1) if found else None


# -- this version beside the champion ---------------------------------------------------------

# (label, tag, format, lower is better): figures only the registration measured
TAG_ROWS = [
    ("p99 ms, batch 1", "metric.p99_ms_batch_1", "{:.4f}", True),
    ("size, bytes", "optimize.size_bytes", "{:,.0f}", True),
]


def comparison_markdown(
    comparison: Comparison,
    *,
    mine: Mapping[str, str],
    theirs: Mapping[str, str] | None,
    at: str,
    heading: str,
) -> str:
    """The recomputed comparison as the card shows it. ``mine``/``theirs``: the lineage
    tags the two versions were registered with (latency, size, variant, commit)."""
    if comparison.champion is None:
        return f"**{heading.rstrip(', ')}: none, nothing to compare with** (checked {at})."
    worse = [s for s in comparison.splits if s.worse]
    verdict = "**WORSE than the champion**" if worse else "not worse"
    kept = any(s.split.startswith("gate:") for s in comparison.splits)
    scored = "this version's logged test rows" + (
        " and the rows the gate kept when it approved the champion" if kept else ""
    )
    lines = [
        f"**{heading} {comparison.champion}**, recomputed by the review gate at {at} on "
        f"{scored}: {verdict} (McNemar, alpha {comparison.alpha:g}).",
        "",
    ]
    for s in comparison.splits:
        whose = f" ({s.source}, sha256 `{s.sha256[:12]}`)" if s.source else ""
        lines.append(
            f"- {s.split}, {s.rows} rows{whose}: accuracy {s.challenger.accuracy:.4f} vs "
            f"{s.champion.accuracy:.4f}; {s.test.only_challenger_right} rows only this "
            f"version gets right, {s.test.only_champion_right} only the champion; McNemar "
            f"p = {s.test.p_value:.3g}"
        )
    lines += [f"- {note}" for note in comparison.notes]
    lines += ["", f"| | this version | champion {comparison.champion} | change |"]
    lines.append("|---|---|---|---|")
    for s in comparison.splits:
        rows = [
            (f"accuracy ({s.split})", s.challenger.accuracy, s.champion.accuracy),
            (f"macro-F1 ({s.split})", s.challenger.macro_f1, s.champion.macro_f1),
        ]
        if s.split == "test":
            rows += [
                (f"recall {c}", r, s.champion.recall.get(c, 0.0))
                for c, r in s.challenger.recall.items()
            ]
        for label, ours, champs in rows:
            lines.append(f"| {label} | {ours:.4f} | {champs:.4f} | {change(ours, champs, False)} |")
        lines.append(f"| McNemar p ({s.split}) | {s.test.p_value:.3g} | | |")
    for label, key, fmt, lower in TAG_ROWS:
        a, b = number(mine.get(key)), number((theirs or {}).get(key))
        shown = [fmt.format(v) if v is not None else "n/a" for v in (a, b)]
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | {change(a, b, lower)} |")
    variant = [
        f"{t.get(LineageTag.MODEL_FAMILY, '?')} {t.get(LineageTag.MODEL_VARIANT, '?')}"
        for t in (mine, theirs or {})
    ]
    lines += [f"| variant | {variant[0]} | {variant[1]} | |", ""]
    lines.append(what_changed(mine, (comparison.champion, dict(theirs)) if theirs else None))
    return "\n".join(lines)


def change(mine: float | None, theirs: float | None, lower_better: bool) -> str:
    if mine is None or theirs is None or theirs == 0:
        return ""
    delta = mine - theirs
    if delta == 0:
        return "same"
    worse = delta > 0 if lower_better else delta < 0
    text = f"{delta:+.4g} ({delta / abs(theirs):+.1%})"
    return f"**{text} worse**" if worse and abs(delta / theirs) > 0.005 else text


def what_changed(tags: Mapping[str, str], champion: tuple[str, dict[str, str]] | None) -> str:
    commit = tags.get(LineageTag.GIT_COMMIT, "unknown")
    dirty = " (uncommitted changes)" if tags.get(LineageTag.GIT_DIRTY) == "True" else ""
    text = (
        f"**What changed**: commit `{commit[:12]}`{dirty} by {tags.get(LineageTag.GIT_AUTHOR)}; "
        f"data md5 `{tags.get(LineageTag.DVC_DATA_MD5, '?')[:12]}`, params sha256 "
        f"`{tags.get(LineageTag.DVC_PARAMS_SHA256, '?')[:12]}`"
    )
    if champion:
        theirs = champion[1]
        other = theirs.get(LineageTag.GIT_COMMIT, "unknown")
        same_data = theirs.get(LineageTag.DVC_DATA_MD5) == tags.get(LineageTag.DVC_DATA_MD5)
        same_params = theirs.get(LineageTag.DVC_PARAMS_SHA256) == tags.get(
            LineageTag.DVC_PARAMS_SHA256
        )
        text += (
            f". The champion came from `{other[:12]}`: data "
            f"{'the same' if same_data else 'changed'}, params "
            f"{'the same' if same_params else 'changed'}"
        )
        if not same_params and commit != "unknown" and other != "unknown":
            text += f" (`git diff {other[:12]} {commit[:12]} -- params.yaml`)"
    return text + "."


def number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# -- the gate's audit, on the production version ------------------------------------------------


def audit_markdown(entries: Sequence[Any], *, deploy: Any | None, where: str) -> str:
    """The gate's audit entries of one production version (``registry.store.Entry``),
    summarised: approved by, when, comment, candidate, gates, comparison; and its deploy
    as the gate's database has it now (``registry.store.Deploy``, None: never requested)."""
    lines = [
        "**Review gate audit** (written by the gate; the full append-only log: " + where + ")",
        "",
    ]
    for e in entries:
        d: dict[str, Any] = e.detail
        at = e.at.isoformat(timespec="seconds") if hasattr(e.at, "isoformat") else str(e.at)
        if e.event == "approved":
            failed = [k for k, v in (d.get("gates") or {}).items() if v is None]
            gates = ", ".join(
                f"{k} {v:.4g}" for k, v in (d.get("gates") or {}).items() if v is not None
            )
            lines.append(
                f"- {at} **approved by {e.actor}**: {d.get('candidate')} (run "
                f"`{d.get('run_id')}`, author {d.get('author')}, sha256 "
                f"`{str(d.get('onnx_sha256'))[:12]}`); comment: {json.dumps(d.get('comment', ''))}"
            )
            lines.append(
                f"  - gates recomputed from the run: {gates}"
                + (f"; not logged: {failed}" if failed else "")
            )
            summary = (d.get("comparison") or {}).get("summary")
            if summary:
                lines.append(f"  - comparison recomputed at approval: {summary}")
        else:
            extra = ", ".join(
                f"{k} {v}" for k, v in d.items() if k in {"previous", "via", "attempts", "error"}
            )
            lines.append(f"- {at} {e.event} by {e.actor}" + (f" ({extra})" if extra else ""))
    if deploy is None:
        lines.append("- deploy: never requested")
    else:
        when = deploy.updated_at.isoformat(timespec="seconds")
        retry = (
            f", next attempt {deploy.next_attempt_at.isoformat(timespec='seconds')}"
            if deploy.state == "failed" and deploy.next_attempt_at
            else ""
        )
        lines.append(
            f"- **deploy: {deploy.state}** (attempts {deploy.attempts}, since {when}{retry})"
        )
    return "\n".join(lines)
