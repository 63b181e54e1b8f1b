"""Shadow evidence (issue 13, item 4): the challenger's answers beside the champion's on the
same live requests, as `modelyard serve --shadow` logs them, read back by the drift job.

- ``shadow_evidence`` on a log written with the service's own InferenceLog: rows,
  agreement over the answered requests, errors, and each model's accuracy on the
  requests that got a feedback label (a failed challenger answer counts as wrong);
- the model card's shadow section is replaced, not repeated;
- a registry that fails while tagging is a failure (exit 2), not ignored;
- one `monitor run` on a copy of the trained project writes the evidence onto a real
  challenger version (``shadow.*`` tags and its model card) and prints it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from monitoring import logscan, monitor
from services.inference_log import InferenceLog
from tests.conftest import Project, copy_of, free_port
from tests.monitoring.conftest import MODEL, split_rows

CHAMPION, CHALLENGER = f"{MODEL}/1", f"{MODEL}/2"


def shadow_records(
    answers: list[tuple[Any, Any, str | None]], *, prefix: str = "s"
) -> list[dict[str, Any]]:
    """Shadow records as the service writes them: (challenger's answer, champion's
    answer, error) per request."""
    now = time.time()
    return [
        {
            "type": "shadow",
            "id": f"{prefix}{i}",
            "ts": now,
            "model": CHALLENGER,
            "champion": CHAMPION,
            "prediction": mine,
            "champion_prediction": theirs,
            "error": error,
        }
        for i, (mine, theirs, error) in enumerate(answers)
    ]


def feedback(labels: dict[str, Any]) -> list[dict[str, Any]]:
    now = time.time()
    return [{"type": "feedback", "id": k, "label": v, "ts": now} for k, v in labels.items()]


def write(log_dir: Path, records: list[dict[str, Any]]) -> None:
    writer = InferenceLog(log_dir)
    writer.append(records)
    writer.close()


def test_evidence_from_a_logged_window(tmp_path: Path) -> None:
    # 10 requests: s0-s5 agree, s6-s7 disagree, s8-s9 the challenger failed on.
    answers: list[tuple[Any, Any, str | None]] = [(d, d, None) for d in range(6)]
    answers += [(7, 1, None), (3, 8, None), (None, 4, "RuntimeError: boom"), (None, 5, "x")]
    # Labels on s0 (both right), s6 (the challenger right: "7" as text, 7 logged),
    # s7 (both wrong), s8 (the challenger failed: wrong; the champion right).
    write(tmp_path, shadow_records(answers) + feedback({"s0": 0, "s6": "7", "s7": 9, "s8": 4}))

    window = logscan.scan(tmp_path, time.time() - 60, time.time() + 60, 100, 0)
    (evidence,) = monitor.shadow_evidence(window.shadow, window.feedback)

    assert evidence == monitor.ShadowEvidence(
        challenger=CHALLENGER,
        champion=CHAMPION,
        rows=10,
        errors=2,
        agreement=6 / 8,  # of the 8 answered
        labelled=4,
        accuracy=2 / 4,  # s0, s6
        champion_accuracy=2 / 4,  # s0, s8
    )
    tags = evidence.tags(
        monitor.Window("2026-11-26T01:00:00+00:00", "2026-11-26T02:00:00+00:00", "/l", 1)
    )
    assert tags == {
        "shadow.rows": "10",
        "shadow.agreement": "0.7500",
        "shadow.accuracy": "0.5000",
        "shadow.champion_accuracy": "0.5000",
        "shadow.labelled": "4",
        "shadow.errors": "2",
        "shadow.window": "2026-11-26T01:00:00+00:00 .. 2026-11-26T02:00:00+00:00",
        "shadow.champion": CHAMPION,
    }
    assert evidence.describe() == (
        f"{CHALLENGER} in shadow of {CHAMPION}: 10 requests, agreement 0.750, 2 errors; "
        "on 4 labelled: accuracy 0.500 vs champion 0.500"
    )


def test_no_labels_no_accuracy_and_no_shadow_no_evidence(tmp_path: Path) -> None:
    write(tmp_path, shadow_records([(1, 1, None), (2, 3, None)]))
    window = logscan.scan(tmp_path, time.time() - 60, time.time() + 60, 100, 0)

    (evidence,) = monitor.shadow_evidence(window.shadow, window.feedback)

    assert (evidence.rows, evidence.agreement, evidence.labelled) == (2, 0.5, 0)
    assert evidence.accuracy is None and evidence.champion_accuracy is None
    assert evidence.tags(monitor.Window("a", "b", "/l", 1))["shadow.accuracy"] == "n/a"
    assert "no feedback labels on them" in evidence.describe()
    assert monitor.shadow_evidence([], {"x": 1}) == ()


def test_the_model_cards_shadow_section_is_replaced_not_repeated() -> None:
    window = monitor.Window("t0", "t1", "/l", 1)
    first = monitor.ShadowEvidence(CHALLENGER, CHAMPION, 10, 0, 1.0, 4, 1.0, 0.75)
    second = monitor.ShadowEvidence(CHALLENGER, CHAMPION, 30, 1, 0.9, 9, 0.8, 0.7)

    card = monitor.card_with_shadow("**Gates: all passed.**\n\n| gate |\n", first, window)
    again = monitor.card_with_shadow(card, second, monitor.Window("t1", "t2", "/l", 1))

    assert again.startswith("**Gates: all passed.**\n\n| gate |\n\n**Shadow evidence**")
    assert again.count("**Shadow evidence**") == 1
    assert "| accuracy on 9 labelled | 0.800 | 0.700 |" in again
    assert "window t1 .. t2" in again and "t0" not in again


def test_a_registry_outage_while_tagging_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.client import Registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    summary = monitor.Summary(
        status=monitor.OK,
        message="no drift",
        model=CHAMPION,
        window=monitor.Window("t0", "t1", "/l", 1),
        rows=500,
        sampled=500,
        malformed_lines=0,
        folder="/tmp/run",
        shadow=(monitor.ShadowEvidence(CHALLENGER, CHAMPION, 10, 0, 1.0, 0, None, None),),
    )
    down = Registry(f"http://127.0.0.1:{free_port()}")

    outcome = monitor.tag_shadow(down, summary)

    assert outcome.status == monitor.FAILED
    assert outcome.detail.startswith(f"the shadow evidence of {CHALLENGER} was not written")
    assert "cannot tag digits-classifier v2" in outcome.detail
    assert dataclasses.replace(summary, shadow_tags=outcome).exit_code == 2


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One `monitor run` over a window where v2 shadowed v1, in a copy of the trained
    project: what it printed, its summary, and the project's registry."""

    project: Project
    exit_code: int
    out: str
    summary: dict[str, Any]

    @property
    def registry(self) -> Any:
        return self.project.registry()


@pytest.fixture(scope="module")
def evidence(trained: Project, tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    tmp_path = tmp_path_factory.mktemp("shadow-evidence")
    # A copy of the trained project (its own store), with a challenger v2 beside v1.
    project = copy_of(trained.root, tmp_path / "project")
    registry = project.registry()
    v1 = registry.version(MODEL, "1")
    registry.copy_version(MODEL, "1", MODEL, tags=v1.tags)
    # Clean traffic served by v1, 300 of its requests shadowed by v2, 100 of them labelled.
    log_dir = tmp_path / "log"
    features, labels = split_rows(project, 300)
    now = time.time()
    predictions = [
        {"type": "prediction", "id": f"s{i}", "request_id": f"r{i}", "ts": now,
         "model": CHAMPION, "features": row, "prediction": y}
        for i, (row, y) in enumerate(zip(features, labels, strict=True))
    ]  # fmt: skip
    shadows = shadow_records([(y, y, None) for y in labels])  # ids s0..s299: the same requests
    shadows[0]["prediction"], shadows[0]["error"] = None, "RuntimeError: boom"
    shadows[1]["prediction"] = (labels[1] + 1) % 10
    labelled = feedback({f"s{i}": labels[i] for i in range(100)})
    write(log_dir, predictions + shadows + labelled)

    from modelyard.app import app

    with pytest.MonkeyPatch.context() as env:
        for name in ("MODELYARD_ALERT_WEBHOOK_URL", "GITHUB_REPOSITORY", "GITHUB_TOKEN"):
            env.delenv(name, raising=False)
        result = CliRunner().invoke(
            app,
            ["monitor", "run", "--log-dir", str(log_dir), "--since", "1h",
             "--params", str(project.params_path)],
        )  # fmt: skip
    summary = json.loads((project.root / ".modelyard/monitoring/summary.json").read_text())
    return Evidence(project, result.exit_code, " ".join(result.output.split()), summary)


def test_monitor_run_sums_up_the_shadow_window(evidence: Evidence) -> None:
    assert evidence.exit_code == 0, evidence.out
    (shadow,) = evidence.summary["shadow"]
    assert shadow == {
        "challenger": CHALLENGER,
        "champion": CHAMPION,
        "rows": 300,
        "errors": 1,
        "agreement": 298 / 299,
        "labelled": 100,
        "accuracy": 98 / 100,  # s0 failed, s1 wrong
        "champion_accuracy": 1.0,  # the log's predictions are the true labels
    }
    assert evidence.summary["shadow_tags"]["status"] == "tagged"


def test_monitor_run_writes_the_evidence_onto_the_challenger(evidence: Evidence) -> None:
    summary = evidence.summary
    v2 = evidence.registry.version(MODEL, "2")
    assert v2.tags["shadow.rows"] == "300" and v2.tags["shadow.agreement"] == "0.9967"
    assert v2.tags["shadow.accuracy"] == "0.9800"
    assert v2.tags["shadow.champion_accuracy"] == "1.0000"
    assert v2.tags["shadow.labelled"] == "100" and v2.tags["shadow.errors"] == "1"
    assert v2.tags["shadow.champion"] == CHAMPION
    assert (
        v2.tags["shadow.window"] == f"{summary['window']['since']} .. {summary['window']['until']}"
    )
    assert "| accuracy on 100 labelled | 0.980 | 1.000 |" in v2.description


def test_monitor_run_leaves_the_champion_untouched(evidence: Evidence) -> None:
    assert "shadow.rows" not in evidence.registry.version(MODEL, "1").tags


def test_monitor_run_prints_the_shadow_evidence(evidence: Evidence) -> None:
    assert (
        f"shadow: {CHALLENGER} in shadow of {CHAMPION}: 300 requests, agreement 0.997, 1 errors; "
        "on 100 labelled: accuracy 0.980 vs champion 1.000" in evidence.out
    )


def test_the_verdicts_mlflow_run_counts_the_windows_rows_per_model(evidence: Evidence) -> None:
    run = evidence.registry.run(evidence.summary["drift_run"]["run_id"])
    assert run is not None and run.tags["status"] == "ok" and run.tags["model"] == CHAMPION
    assert run.metrics["rows"] == 300 and run.metrics[f"rows.{CHAMPION}"] == 300
