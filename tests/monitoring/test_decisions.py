"""The drift job's pure decisions, on plain objects: exit codes, what a retrain did,
which records can be compared, what an alert failure may say."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from monitoring import monitor
from monitoring.monitor import Outcome
from pipelines.run import Outcome as PipelineOutcome


@pytest.mark.parametrize(
    ("status", "retrain", "code"),
    [
        (monitor.OK, Outcome(monitor.SKIPPED, "no drift"), 0),
        (monitor.NOT_ENOUGH, Outcome(monitor.SKIPPED, "no drift"), 0),
        (monitor.DRIFT, Outcome(monitor.REQUESTED, "retrain requested on GitHub"), 1),
        (monitor.DRIFT, Outcome(monitor.RETRAINED, "retrained: v2", "2"), 1),
        (monitor.DRIFT, Outcome(monitor.UNCHANGED, "nothing retrained", "1"), 1),
        (monitor.DRIFT, Outcome(monitor.SKIPPED, "--no-retrain"), 1),
        (monitor.DRIFT, Outcome(monitor.FAILED, "dvc repro failed"), 2),
        (monitor.DRIFT, None, 1),
    ],
)
def test_exit_code(status: str, retrain: Outcome | None, code: int) -> None:
    assert monitor.exit_code(status, retrain) == code


def test_the_cli_fails_with_the_jobs_failure_code() -> None:
    from modelyard.monitor import FAILED, MONITOR_EXIT_CODES

    assert FAILED == monitor.EXIT_FAILED == 2
    codes = [entry.split()[0] for entry in MONITOR_EXIT_CODES.split("\n\n")[1:]]
    assert codes == ["0", "1", "2", "130"]


def test_a_failed_alert_does_not_change_the_exit_code() -> None:
    summary = monitor.Summary(
        status=monitor.DRIFT,
        message="DRIFT",
        model="m/1",
        window=monitor.Window("a", "b", "/log", 1),
        rows=500,
        sampled=500,
        malformed_lines=0,
        folder="/tmp/run",
        alert=Outcome(monitor.FAILED, "cannot reach the alert webhook"),
        retrain=Outcome(monitor.REQUESTED, "retrain requested on GitHub"),
    )
    assert summary.exit_code == 1


def pipeline(version: str, *, created: bool) -> PipelineOutcome:
    return PipelineOutcome(
        name="digits-classifier",
        version=version,
        created=created,
        alias="challenger",
        alias_version=version,
    )


def test_a_retrain_that_registers_nothing_new_says_so() -> None:
    outcome = monitor.retrain_outcome(pipeline("3", created=False))
    assert outcome.status == monitor.UNCHANGED and outcome.version == "3"
    assert outcome.detail.startswith(
        "nothing retrained: the training data has not changed since v3"
    )


def test_a_retrain_that_registers_a_new_version_says_which() -> None:
    outcome = monitor.retrain_outcome(pipeline("4", created=True))
    assert outcome.status == monitor.RETRAINED and outcome.version == "4"
    assert outcome.detail.startswith("retrained: digits-classifier v4 registered (@challenger)")
    assert "needs a review" in outcome.detail


def record(features: list[object]) -> dict[str, object]:
    return {"type": "prediction", "features": features, "prediction": 1}


def test_screen_keeps_only_records_of_the_reference_width_and_numbers() -> None:
    good = [record([1, 2.5, 0]), record([0.0, 0.0, 16])]
    sample = [
        *good,
        record([1, 2]),
        record([1, 2, 3, 4]),
        record([1, 2, 3, 4]),
        record([1, None, 3]),
        record(["1", 2, 3]),
        record([True, 2, 3]),
        record([float("nan"), 2, 3]),
        record([float("inf"), 2, 3]),
    ]
    screened = monitor.screen(sample, 3)
    assert screened.records == good
    assert screened.wrong_width == Counter({2: 1, 4: 2})
    assert screened.not_numeric == 5
    assert screened.left_out == 8
    assert monitor.describe_left_out(screened, 3) == (
        "1 have 2 features (the reference has 3), 2 have 4 features (the reference has 3), "
        "5 have null or non-numeric features"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/s3cr3t", "https://hooks.slack.com/..."),
        ("http://user:pw@127.0.0.1:9/alert?token=s3cr3t", "http://127.0.0.1:9/..."),
        ("not a url s3cr3t", "<the alert webhook>"),
    ],
)
def test_redact_keeps_the_host_and_drops_the_secret(url: str, shown: str) -> None:
    text = monitor.redact(f"cannot reach the alert webhook at {url} after 3 tries", url)
    assert "s3cr3t" not in text and "pw" not in text
    assert text == f"cannot reach the alert webhook at {shown} after 3 tries"


def test_an_alert_that_cannot_be_sent_is_an_outcome_not_an_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    summary = monitor.Summary(
        status=monitor.DRIFT,
        message="DRIFT",
        model="m/1",
        window=monitor.Window("a", "b", str(tmp_path), 1),
        rows=500,
        sampled=500,
        malformed_lines=0,
        folder=str(tmp_path / "run"),
    )
    url = f"http://127.0.0.1:{free_port()}/alert"
    outcome = monitor.send_alert(url, summary)
    assert outcome.status == monitor.FAILED
    assert outcome.detail.startswith("cannot reach the alert webhook at http://127.0.0.1:")
    assert monitor.send_alert(None, summary).status == monitor.SKIPPED


def test_an_evidently_error_is_a_monitoring_error() -> None:
    import numpy as np
    import pandas as pd

    from core.errors import MonitoringError
    from monitoring import drift

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(100, 2)), columns=["a", "b"])
    frame[drift.PREDICTION] = rng.choice(["0", "1"], 100)
    with pytest.raises(MonitoringError, match="Evidently could not compute the drift report"):
        drift.compare(frame, frame, features=["a", "b"], drift_share=0.3, method="no-such-test")
    empty = frame.assign(a=np.nan)
    with pytest.raises(MonitoringError, match="An empty column 'a'"):
        drift.compare(frame, empty, features=["a", "b"], drift_share=0.3)


def test_the_report_header_is_escaped_and_goes_after_body() -> None:
    from monitoring import drift

    header = drift.Header(
        title="DRIFT: <script>alert(1)</script> v1",
        verdict='drift" onmouseover="x',
        fields=(("Model", "a&b <img src=x onerror=alert(2)>"), ("Window (UTC)", "t0 .. t1")),
    )
    block = drift.header_html(header)
    assert "<script>" not in block and "<img" not in block and 'onmouseover="x' not in block
    assert "DRIFT: &lt;script&gt;alert(1)&lt;/script&gt; v1" in block
    assert "a&amp;b &lt;img src=x onerror=alert(2)&gt;" in block
    assert "<th" in block and "t0 .. t1" in block  # the table itself is HTML
    page = '<html><head><title>x</title></head><BODY class="e">\n<div>evidently</div></body>'
    out = drift.with_header(page, block)
    assert out.startswith('<html><head><title>x</title></head><BODY class="e">' + block)
    assert out.endswith("\n<div>evidently</div></body>")
    assert drift.with_header("<div>no body</div>", block) == block + "<div>no body</div>"


def test_a_version_without_a_test_split_says_its_quality_reference_is_the_training_one() -> None:
    import pandas as pd

    from pipelines.config import Monitor

    frame = pd.DataFrame({"a": [1.0, 2.0], "prediction": ["0", "1"], "target": ["0", "1"]})
    note = "v1 has no data.test_uri tag (registered before ...)"
    ref = monitor.Reference(
        "m",
        "1",
        frame,
        ["a"],
        ["0", "1"],
        [],
        "runs:/r/reference/train.parquet",
        quality=frame,
        quality_split="train",
        quality_uri="runs:/r/reference/train.parquet",
        quality_note=note,
    )
    summary = monitor.Summary(
        status=monitor.OK,
        message="no drift: 0/1 features drifted",
        model="m/1",
        window=monitor.Window("2026-11-26T01:00:00+00:00", "2026-11-26T02:00:00+00:00", "/l", 1),
        rows=500,
        sampled=500,
        malformed_lines=0,
        folder="/tmp/run",
    )
    header = monitor.report_header(summary, ref, Monitor(), at="2026-11-26T02:00:05+00:00")
    fields = dict(header.fields)
    assert header.title == "OK: m v1, 2026-11-26T01:00:00+00:00 .. 2026-11-26T02:00:00+00:00"
    assert fields["Quality reference"] == f"the training split: {note}"
    assert (
        fields["Drift reference"] == "the training split, 2 rows (runs:/r/reference/train.parquet)"
    )
    production = replace(ref, drift_split="train:production")
    assert dict(monitor.report_header(summary, production, Monitor(), at="t").fields)[
        "Drift reference"
    ].startswith("the production rows of the training split, 2 rows")
    assert fields["Run at (UTC)"] == "2026-11-26T02:00:05+00:00"
    assert fields["Verdict"] == "no drift: 0/1 features drifted"


def test_a_version_that_learned_from_production_drifts_against_those_rows() -> None:
    import pandas as pd

    split = pd.DataFrame(
        {"pixel_0": range(10), "source": ["base"] * 6 + ["production"] * 4, "label": [1] * 10}
    )
    rows, which = monitor.drift_rows(split, production_min=4)
    assert which == "train:production"
    assert list(rows["pixel_0"]) == [6, 7, 8, 9]
    # too few production rows, no source column, or no minimum: the whole training split
    for frame, minimum in ((split, 5), (split.drop(columns="source"), 1), (split, None)):
        rows, which = monitor.drift_rows(frame, production_min=minimum)
        assert which == "train" and len(rows) == 10


def test_prediction_drift_is_a_distance_not_a_chance_alarm_on_a_small_reference() -> None:
    """A few hundred reference rows (a retrained version's production rows): Evidently's
    own choice there is a chi-square p-value, which flags a class mix this close (each
    class within a few rows); monitor.prediction_method (Jensen-Shannon, 0.1) does not."""
    import numpy as np
    import pandas as pd

    from monitoring import drift

    rng = np.random.default_rng(0)
    ref_counts = [70] * 10  # 700 rows, uniform over the classes
    cur_counts = [45, 45, 45, 45, 60, 60, 75, 75, 75, 75]  # 600 rows, slightly skewed

    def frame(counts: list[int]) -> pd.DataFrame:
        labels = [str(c) for c, n in enumerate(counts) for _ in range(n)]
        return pd.DataFrame({"f0": rng.normal(size=len(labels)), drift.PREDICTION: labels})

    ref, cur = frame(ref_counts), frame(cur_counts)
    default = drift.compare(ref, cur, features=["f0"], drift_share=0.3).prediction
    assert "chi" in default.method.lower() and default.drifted, default
    configured = drift.compare(
        ref,
        cur,
        features=["f0"],
        drift_share=0.3,
        prediction_method="jensenshannon",
        prediction_threshold=0.1,
    ).prediction
    assert "jensen" in configured.method.lower() and not configured.drifted, configured
    assert configured.threshold == 0.1
