"""The actions on drift: the alert webhook (``send_alert``), the harvest of new labels and
the retrain decision (``decide_retrain``), and the retrain itself (``request_retrain``: a
GitHub dispatch, or the local pipeline)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core import http
from core.errors import (
    ExternalServiceError,
    ModelyardError,
    MonitoringError,
)
from core.tagkeys import DataTag
from pipelines.config import Params
from registry.client import Registry

if TYPE_CHECKING:
    from core.github import GitHub
    from pipelines.run import Outcome as PipelineOutcome
from monitoring.verdict import (
    FAILED,
    NO_NEW_LABELS,
    REQUESTED,
    RETRAINED,
    SENT,
    SKIPPED,
    UNCHANGED,
    NewLabels,
    Outcome,
    Summary,
)

log = logging.getLogger(__name__)


def send_alert(url: str | None, summary: Summary, *, retrain: Outcome | None = None) -> Outcome:
    """POST the summary (JSON) to the alert webhook, with ``retrain``: what the job does
    about the drift (retrains, requested, or why not). Never raises: an unreachable or
    refusing webhook is recorded as ``failed`` with the reason, and the verdict stands
    (the job's exit code 1 is an alert of its own)."""
    if not url:
        return Outcome(SKIPPED, "no alert webhook (--alert-url or MODELYARD_ALERT_WEBHOOK_URL)")
    payload = {
        "source": "modelyard monitor",
        **{
            k: v
            for k, v in summary.as_dict().items()
            if k not in ("alert", "retrain", "shadow_tags", "labels")
        },
    }
    if retrain is not None:
        payload["retrain"] = {"status": retrain.status, "detail": retrain.detail}
    try:
        status, _ = http.request_json("POST", url, payload, what="the alert webhook")
    except ExternalServiceError as exc:
        reason = redact(str(exc), url)
        log.warning("the alert was not sent (the verdict stands): %s", reason)
        return Outcome(FAILED, reason)
    return Outcome(SENT, f"HTTP {status}")


def redact(text: str, url: str) -> str:
    """``text`` without ``url``'s path and query: webhook URLs often carry a secret
    (Slack's do), and the reason lands in summary.json and in CI logs."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return text.replace(url, f"{scheme}://{host}/..." if rest else "<the alert webhook>")


LABELLED_UNTIL = DataTag.PRODUCTION_LABELLED_UNTIL  # register's tag: the newest label trained on


RETRAINING = "retraining"  # what the alert says while the retrain has not run yet


def decide_retrain(
    params: Params,
    summary: Summary,
    *,
    registry: Registry,
    root: Path,
    log_dir: Path,
    enabled: bool,
) -> tuple[NewLabels | None, Outcome | None]:
    """Drift: harvest the feedback labels and count those newer than the data the latest
    registered version trained on: (what the harvest found, None if it did not run;
    the final Outcome when there is nothing to retrain: skipped, no-new-labels, or failed
    (a harvest that fails is a failed retrain, never "no new labels"); None: enough new
    labels (``monitor.min_new_labels``), retrain)."""
    if not enabled:
        return None, Outcome(SKIPPED, "--no-retrain")
    if params.monitor.retrain == "off":
        return None, Outcome(SKIPPED, "monitor.retrain is off")
    try:
        labels = new_labels(params, registry=registry, root=root, log_dir=log_dir)
    except (ModelyardError, OSError) as exc:
        log.error("harvesting the feedback labels failed: %s", exc)
        return None, Outcome(
            FAILED,
            f"harvesting the feedback labels failed, so nothing was retrained: {exc} "
            "(fix it and run `modelyard harvest`, then `modelyard monitor run` again)",
        )
    minimum = params.monitor.min_new_labels
    if labels.count >= minimum:
        return labels, None
    since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
    needed = f" (monitor.min_new_labels is {minimum})" if minimum > 1 else ""
    return labels, Outcome(
        NO_NEW_LABELS,
        f"drift on {len(summary.drifted_columns)}/{len(summary.scores)} features; "
        f"{labels.count} new labels {since}{needed}: collect feedback (POST /v1/feedback), "
        "nothing retrained",
        labels.since_version,
    )


def new_labels(params: Params, *, registry: Registry, root: Path, log_dir: Path) -> NewLabels:
    """Harvest (``monitoring.harvest``), then count the labelled rows newer than the
    ``data.production_labelled_until`` of the latest registered version (any alias; no
    tag: 0, every label is new)."""
    from monitoring import harvest

    done = harvest.harvest(params, root=root, log_dir=log_dir)
    versions = registry.versions(params.register_.model_name)
    latest = versions[-1] if versions else None
    since = labelled_until(latest.tags if latest else {})
    count = harvest.labelled_after(root, params.paths, since)
    path = Path(done.path) if Path(done.path).is_absolute() else root / done.path
    pointer = path.with_name(path.name + ".dvc")
    return NewLabels(
        count=count,
        since_version=latest.version if latest else None,
        since=since,
        harvested=done.rows,
        path=str(path),
        pointer=pointer.read_text(encoding="utf-8") if pointer.is_file() else None,
    )


def labelled_until(tags: dict[str, str]) -> float:
    """A version's ``data.production_labelled_until`` as epoch seconds (epoch or ISO
    text; missing or "0": 0, it trained on no production row)."""
    text = tags.get(LABELLED_UNTIL, "0").strip() or "0"
    if re.fullmatch(r"\d+(?:\.\d*)?", text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MonitoringError(
            f"the latest version's {LABELLED_UNTIL} tag is {text!r}, neither epoch seconds "
            "nor an ISO time: fix or delete the tag (register writes it)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _announce(decided: NewLabels | None, github: GitHub | None) -> Outcome | None:
    """What the alert says the job is about to do about the drift: retrain."""
    if decided is None:
        return None
    where = f"a `retrain` dispatch to {github.repository}" if github else "the pipeline here"
    since = f"since v{decided.since_version}" if decided.since_version else "(no version yet)"
    return Outcome(RETRAINING, f"{decided.count} new labels {since}: retraining ({where})")


def request_retrain(
    params: Params,
    summary: Summary,
    *,
    root: Path,
    github: GitHub | None,
    labels: NewLabels,
    drift_run: str | None,
) -> Outcome:
    """Drift with new labels: retrain. A GitHub ``repository_dispatch`` ``retrain`` when
    ``github`` is given (train.yml listens): the harvested labels are pushed to the DVC
    remote first and the payload carries their DVC pointer and ``drift_run``; that is a
    retrain *requested*. Else the pipeline here, as ``modelyard run --drift-run`` runs it
    (``dvc repro``, then the idempotent register, which links a new version and the drift
    run both ways). Either way a new version is only a challenger: it still needs a
    review. Never raises a ModelyardError: a failure is recorded as ``failed``."""
    since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
    try:
        if github is not None:
            pointer = publish_labels(labels, root=root)
            github.dispatch(
                "retrain",
                {
                    "model": summary.model or "",
                    "reason": summary.message[:200],
                    "drift_share": f"{summary.drift_share or 0:.3f}",
                    "drift_run": drift_run or "",
                    "production_dvc": pointer,
                },
            )
            return Outcome(
                REQUESTED,
                f"{labels.count} new labels {since}: retrain requested on GitHub "
                f"({github.repository}: repository_dispatch `retrain`, train.yml, with the "
                "labels' DVC pointer and the drift run); no new version yet, and the one it "
                "registers will need a review",
            )
        from pipelines import run as pipeline

        log.info("drift: retraining here on %d new labels (dvc repro in %s)", labels.count, root)
        done = pipeline.run(params, root, drift_run=drift_run)
    except ModelyardError as exc:
        log.error("retraining failed: %s", exc)
        return Outcome(FAILED, str(exc))
    return retrain_outcome(done, labels=labels)


def publish_labels(labels: NewLabels, *, root: Path) -> str:
    """`dvc push` the harvested dataset to the project's DVC remote (DVC_REMOTE_URL, else
    the default remote), so CI can `dvc pull` it; returns its .dvc pointer's text."""
    from core import settings
    from pipelines import run as pipeline

    if labels.pointer is None:
        raise MonitoringError(
            f"the harvested labels cannot reach CI: {labels.path} is not tracked by DVC (no "
            f"{Path(labels.path).name}.dvc: the project has no .dvc/ or harvest.dvc_add is "
            "off). Run `dvc init`, add a DVC remote (or set DVC_REMOTE_URL), and run again"
        )
    pointer = Path(labels.path + ".dvc")
    pipeline.push(root, url=settings.current().dvc_remote_url, targets=[pointer])
    return labels.pointer


def retrain_outcome(done: PipelineOutcome, *, labels: NewLabels | None = None) -> Outcome:
    """What a local retrain did, in words: a new version, or nothing (the pipeline's model
    is one the registry already holds: `dvc repro` found everything up to date, or made
    the same model again)."""
    on = ""
    if labels is not None:
        since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
        on = f" on {labels.count} new labels {since}"
    if done.created:
        return Outcome(
            RETRAINED,
            f"retrained{on}: {done.name} v{done.version} registered (@{done.alias}); it still "
            "needs a review (`modelyard promote`)",
            done.version,
        )
    return Outcome(
        UNCHANGED,
        f"nothing retrained: the training data has not changed since v{done.version} "
        f"({done.name} v{done.version} already holds the pipeline's model)",
        done.version,
    )
