"""Promotion rules, pure: a version's tags and an approval in, a decision out.

A version may become ``champion`` only if

- modelyard registered it (it carries ``onnx.sha256``) and every gate passed;
- its data validation passed;
- a reviewer approved it (``approval.reviewer`` on the version), and
- the reviewer is not the author of the commit that trained it (four eyes).

No I/O here: ``registry.promotion`` reads the registry, calls ``decide`` and applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from core.tagkeys import ApprovalTag, LineageTag, RunTag

APPROVAL_REVIEWER = ApprovalTag.REVIEWER
APPROVAL_AT = ApprovalTag.AT
APPROVAL_COMMENT = ApprovalTag.COMMENT


@dataclass(frozen=True)
class Decision:
    ok: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "approved" if self.ok else "refused: " + "; ".join(self.reasons)


def decide(tags: Mapping[str, str]) -> Decision:
    """Whether the version with these tags may become champion, and why not."""
    reasons: list[str] = []
    if LineageTag.ONNX_SHA256 not in tags:
        reasons.append("not registered by the modelyard pipeline (no onnx.sha256 tag)")
    if tags.get(LineageTag.GATES_PASSED) != "True":
        failed = sorted(
            k.removeprefix("gate.")
            for k, v in tags.items()
            if k.startswith("gate.") and v == "fail"
        )
        reasons.append("gates did not pass" + (f": {', '.join(failed)}" if failed else ""))
    if tags.get(LineageTag.VALIDATION_SUCCESS) != "True":
        reasons.append("data validation did not pass")
    reviewer = tags.get(APPROVAL_REVIEWER, "").strip()
    if not reviewer:
        reasons.append(f"no approval: a reviewer must set the version tag {APPROVAL_REVIEWER}")
    else:
        author = tags.get(LineageTag.GIT_AUTHOR, "").strip()
        author_name = tags.get(LineageTag.GIT_AUTHOR_NAME, "").strip()
        if not author or author == "unknown":
            reasons.append(
                "the training commit's author is unknown, so four eyes cannot be checked"
            )
        elif _same_person(reviewer, author) or (
            author_name and reviewer.strip().lower() == author_name.lower()
        ):
            reasons.append(
                f"four eyes: reviewer {reviewer} is the author of commit {tags.get(LineageTag.GIT_COMMIT, '?')[:12]}"
            )
    return Decision(not reasons, reasons)


def _same_person(reviewer: str, author: str) -> bool:
    """Emails compare case-insensitively; a bare name matches the email's local part."""
    r, a = reviewer.lower(), author.lower()
    return r == a or ("@" not in r and r == a.split("@")[0])


# -- team mode: evidence, not tags -------------------------------------------------------------

# What the pipeline logs on its MLflow run (``evaluate``: metrics prefixed ``test.``;
# ``train``: validation.success; ``register``: the registered file's sha256 and the
# author). The contract between the pipeline and the gate: the gate reads these, never
# the version's tags.
METRIC_OF_GATE = {
    "min_accuracy": ("test.accuracy", ">="),
    "min_macro_f1": ("test.macro_f1", ">="),
    "max_p99_ms": ("test.latency.batch_1.cpu_p99_ms", "<="),  # CPU time: load cannot fake it
    "min_class_recall": ("test.min_class_recall", ">="),
    "min_noise_invariance": ("test.noise_invariance", ">="),
}
RUN_COMMIT_AUTHOR = (
    LineageTag.GIT_AUTHOR
)  # the training commit's author email, as CI checked it out
RUN_AUTHOR = RunTag.AUTHOR  # the verified identity CI trained for (GITHUB_ACTOR)
RUN_VALIDATION = LineageTag.VALIDATION_SUCCESS
RUN_ONNX_SHA256 = RunTag.REGISTERED_ONNX_SHA256


@dataclass(frozen=True)
class Rules:
    """The gate's own thresholds (its checkout's params.yaml: evaluate), not the run's."""

    min_accuracy: float
    min_macro_f1: float
    max_p99_ms: float
    min_class_recall: float
    min_noise_invariance: float
    # The comparison with the current champion (registry.comparison), recomputed at
    # approval on the candidate's logged test splits: refused when significantly worse.
    champion_alpha: float = 0.05
    min_production_rows: int = 30  # production test rows needed to compare on them

    @classmethod
    def of(cls, section: object) -> Rules:
        """The rules from a config section with these names (params.yaml: evaluate)."""
        names = [f.name for f in fields(cls)]
        return cls(**{name: getattr(section, name) for name in names})


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float | None
    threshold: float
    op: str
    passed: bool


@dataclass(frozen=True)
class Evidence:
    """What the registry and the run say about a candidate, gathered by the gate."""

    candidate: str  # "NAME vN", for messages
    run_id: str | None
    run_exists: bool
    run_in_trainer_experiment: bool
    artifact_logged_by_run: bool
    metrics: Mapping[str, float]
    run_tags: Mapping[str, str]
    onnx_sha256: str | None  # recomputed from the registered artifact
    version_tags: Mapping[str, str]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    gates: list[GateCheck]
    author: str | None


def recompute_gates(metrics: Mapping[str, float], rules: Rules) -> list[GateCheck]:
    """Every gate from the run's logged metrics and the gate's thresholds. Pure."""
    checks = []
    for name, (metric, op) in METRIC_OF_GATE.items():
        threshold = float(getattr(rules, name))
        value = metrics.get(metric)
        passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        checks.append(GateCheck(name, value, threshold, op, passed))
    return checks


def judge(evidence: Evidence, rules: Rules, *, reviewer: str, people: Mapping[str, str]) -> Verdict:
    """Whether the reviewer may make this candidate champion, from evidence only. Pure.

    ``reviewer``: the authenticated login. ``people``: every known name (login, GitHub
    login, commit email; lower-cased) -> the person (login) it names (team.yaml). Four
    eyes compares persons: the run's author (CI's verified actor) and the training
    commit's author (its email) must each name a known person, and neither the reviewer.
    """
    reasons: list[str] = []
    name = evidence.candidate
    if not evidence.run_exists:
        reasons.append(f"{name}: its source run {evidence.run_id or '(none)'} does not exist")
        return Verdict(Decision(False, reasons), [], None)
    if not evidence.run_in_trainer_experiment:
        reasons.append(
            f"{name}: run {evidence.run_id} is not in the trainer's experiment, so it was "
            "not produced by the CI trainer"
        )
    if not evidence.artifact_logged_by_run:
        reasons.append(f"{name}: the registered artifact was not logged by run {evidence.run_id}")
    logged_sha = evidence.run_tags.get(RUN_ONNX_SHA256)
    if evidence.onnx_sha256 is None:
        reasons.append(f"{name}: the registered artifact holds no model.onnx")
    elif logged_sha != evidence.onnx_sha256:
        reasons.append(
            f"{name}: model.onnx (sha256 {evidence.onnx_sha256[:12]}) is not the file run "
            f"{evidence.run_id} registered ({(logged_sha or 'none recorded')[:12]})"
        )
    tagged_sha = evidence.version_tags.get(LineageTag.ONNX_SHA256)
    if tagged_sha and evidence.onnx_sha256 and tagged_sha != evidence.onnx_sha256:
        reasons.append(
            f"{name}: its onnx.sha256 tag ({tagged_sha[:12]}) does not match the artifact "
            f"({evidence.onnx_sha256[:12]}): the tags were edited"
        )
    gates = recompute_gates(evidence.metrics, rules)
    failed = [g for g in gates if not g.passed]
    if failed:
        reasons.append(
            "gates recomputed from the run's metrics failed: "
            + ", ".join(
                f"{g.name} {'not logged' if g.value is None else f'{g.value:.4g}'} (needs {g.op} {g.threshold:g})"
                for g in failed
            )
        )
    if evidence.run_tags.get(RUN_VALIDATION) != "True":
        reasons.append(f"{name}: data validation did not pass on run {evidence.run_id}")
    author = (evidence.run_tags.get(RUN_AUTHOR) or "").strip() or None
    if author is None or author.lower() == "unknown":
        reasons.append(
            f"{name}: run {evidence.run_id} records no verified author ({RUN_AUTHOR}), so four "
            "eyes cannot be checked: train it in CI"
        )
    else:
        reasons += _four_eyes(reviewer, people, author, "who authored run", evidence.run_id)
    committer = (evidence.run_tags.get(RUN_COMMIT_AUTHOR) or "").strip()
    if not committer or committer.lower() == "unknown":
        reasons.append(
            f"{name}: run {evidence.run_id} records no commit author ({RUN_COMMIT_AUTHOR}), so "
            "four eyes cannot be checked: train it with the current pipeline in CI"
        )
    else:
        reasons += _four_eyes(
            reviewer, people, committer, "author of the commit of run", evidence.run_id
        )
    return Verdict(Decision(not reasons, reasons), gates, author)


def _four_eyes(
    reviewer: str, people: Mapping[str, str], name: str, what: str, run_id: str | None
) -> list[str]:
    person = people.get(name.lower())
    if person is None:
        return [
            f"unknown author: {name} ({what} {run_id}) is nobody in team.yaml: add them to "
            "team.yaml (users.<login>.github or .emails)"
        ]
    if person == people.get(reviewer.lower(), reviewer):
        return [f"four eyes: {reviewer} is {name}, {what} {run_id}"]
    return []
