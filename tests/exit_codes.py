"""Which test produces each exit code a command documents in its ``--help``.

STYLE.md: one exit-code table per command, and a test per code. This is the index of those
tests. tests/modelyard/test_cli.py fails when a documented (command, code) is in neither
table below, or when an entry names a code no help documents; tests/conftest.py fails a
test named here if it passes without having seen that command exit with that code.

A new command or code: write the test that produces it (``Project.cli``, ``modelyard()``
or ``record_exit`` record what the CLI answered), then add it to ``PRODUCED_BY``.
"""

from __future__ import annotations

CLI = "tests/modelyard/test_cli.py"
BAD_PARAMS = f"{CLI}::test_a_bad_params_file_stops_every_command_with_2"
EMPTY = f"{CLI}::test_in_an_empty_project_each_command_says_what_is_missing"
EMPTY_DVC = f"{CLI}::test_in_an_empty_project_the_dvc_commands_say_what_is_missing"
UNREACHABLE = f"{CLI}::test_an_unreachable_registry_stops_registry_commands_with_1"
USAGE = f"{CLI}::test_a_usage_error_is_2"
STAGES = f"{CLI}::test_summary_after_the_stages_shows_metrics_gates_and_the_version"

INIT = "tests/pipelines/test_init.py::test_init_command_prints_its_choices_and_maps_errors_to_exit_codes"
K8S = "tests/services/test_k8s.py"
IMAGE = "tests/services/test_image.py::test_the_recorded_digest_is_the_manifest_the_registry_serves"
MONITOR = "tests/monitoring/test_monitor.py"
PROMOTION = "tests/registry/test_promotion.py"
DEPLOY = "tests/services/test_deploy.py::test_record_then_reconcile_is_in_sync"
DEPLOY_MISSING = "tests/services/test_deploy.py::test_record_of_a_version_that_does_not_exist_is_1"
SMOKE = "tests/services/test_deploy.py"
KEYS_CLI = "tests/modelyard/test_keys_cli.py"
RECORD_FAILURE = "test_a_failed_rollout_is_recorded_and_an_image_only_run_is_not_a_deploy"
E2E = "tests/e2e/test_dvc_pipeline.py"
TEAM = "tests/registry/test_team.py"
GATE = "tests/registry/test_gate.py"
GATE_FAILED = "tests/pipelines/test_evaluate_register.py::test_failing_gate_registers_nothing"
WEBHOOKS = "tests/registry/test_webhooks.py::test_promotion_dispatches_the_deploy"
KEYS = "tests/registry/test_keys.py"
TUNE = "tests/pipelines/test_tune.py"
ROTATION = "test_a_key_rotation_keeps_approvals_valid_and_resign_moves_them_to_the_new_key"
WEBAPP = "tests/services/webapp/test_package.py"
HARVEST = (
    "tests/monitoring/test_harvest.py::"
    "test_harvest_command_prints_the_summary_and_a_missing_log_dir_is_2"
)
IMAGES = "tests/services/test_images_more.py"
REFUSED = f"{IMAGES}::test_the_commands_refuse_a_bad_backend_or_a_missing_builder"
WEBAPP_BUILD = (
    f"{WEBAPP}::test_webapp_build_makes_a_bento_with_the_pages_and_without_the_model_service"
)

PRODUCED_BY: dict[tuple[str, int], str] = {
    ("init", 0): INIT,
    ("init", 1): INIT,
    ("init", 2): INIT,
    ("ingest", 0): STAGES,
    ("ingest", 1): f"{CLI}::test_ingest_of_an_unreadable_file_is_bad_data",
    ("ingest", 2): f"{BAD_PARAMS}[ingest]",
    ("prepare", 0): STAGES,
    ("prepare", 1): f"{EMPTY}[prepare]",
    ("prepare", 2): f"{BAD_PARAMS}[prepare]",
    ("validate", 0): STAGES,
    ("validate", 1): f"{EMPTY}[validate]",
    ("validate", 2): f"{BAD_PARAMS}[validate]",
    ("train", 0): STAGES,
    ("train", 1): f"{EMPTY}[train]",
    ("train", 2): f"{BAD_PARAMS}[train]",
    ("export", 0): STAGES,
    ("export", 1): f"{EMPTY}[export]",
    ("export", 2): f"{BAD_PARAMS}[export]",
    ("optimize", 0): STAGES,
    ("optimize", 1): f"{EMPTY}[optimize]",
    ("optimize", 2): f"{BAD_PARAMS}[optimize]",
    ("evaluate", 0): STAGES,
    ("evaluate", 1): f"{EMPTY}[evaluate]",
    ("evaluate", 2): f"{BAD_PARAMS}[evaluate]",
    ("register", 0): STAGES,
    ("register", 1): GATE_FAILED,
    ("register", 2): f"{BAD_PARAMS}[register]",
    ("run", 0): f"{E2E}::test_repro_registers_a_version_with_full_lineage",
    ("run", 1): f"{EMPTY_DVC}[run]",
    ("run", 2): f"{BAD_PARAMS}[run]",
    ("summary", 0): STAGES,
    ("summary", 1): f"{EMPTY}[summary]",
    ("summary", 2): f"{BAD_PARAMS}[summary]",
    ("diff", 0): f"{E2E}::test_diff_comments_metrics_and_params_on_the_pull_request",
    ("diff", 1): f"{EMPTY_DVC}[diff]",
    ("diff", 2): f"{BAD_PARAMS}[diff]",
    ("ui", 0): f"{CLI}::test_ui_on_a_tracking_server_points_at_it",
    ("ui", 1): f"{CLI}::test_servers_on_a_port_in_use_say_so_and_exit_1",
    ("ui", 2): f"{BAD_PARAMS}[ui]",
    ("promote", 0): f"{PROMOTION}::test_promote_refuses_without_approval_then_promotes",
    ("promote", 1): f"{EMPTY}[promote]",
    ("promote", 2): f"{BAD_PARAMS}[promote]",
    ("rollback", 0): f"{PROMOTION}::test_rollback_restores_the_previous_champion",
    ("rollback", 1): f"{EMPTY}[rollback]",
    ("rollback", 2): f"{BAD_PARAMS}[rollback]",
    ("champion", 0): f"{EMPTY}[champion]",
    ("champion", 1): f"{UNREACHABLE}[champion]",
    ("champion", 2): f"{BAD_PARAMS}[champion]",
    ("build", 0): "tests/services/test_build.py::test_build_from_registry_version",
    ("build", 1): f"{EMPTY}[build]",
    ("build", 2): f"{BAD_PARAMS}[build]",
    ("serve", 1): f"{EMPTY}[serve]",
    ("serve", 2): f"{BAD_PARAMS}[serve]",
    ("simulate-traffic", 0): f"{MONITOR}::test_clean_traffic_is_no_alarm",
    ("simulate-traffic", 1): f"{EMPTY}[simulate-traffic]",
    ("simulate-traffic", 2): f"{BAD_PARAMS}[simulate-traffic]",
    ("approve", 2): f"{CLI}::test_team_commands_without_their_variables_are_2[approve]",
    ("registry verify", 1): f"{CLI}::test_registry_verify_stops_when_the_registry_is_unreachable",
    (
        "registry verify",
        2,
    ): f"{CLI}::test_team_commands_without_their_variables_are_2[registry verify]",
    ("registry listen", 0): f"{CLI}::test_registry_listen_stops_cleanly_on_ctrl_c",
    ("registry listen", 1): f"{CLI}::test_servers_on_a_port_in_use_say_so_and_exit_1",
    ("registry listen", 2): f"{CLI}::test_registry_listen_needs_the_webhook_secret",
    ("registry reconcile", 0): f"{EMPTY}[registry reconcile]",
    ("registry reconcile", 1): f"{UNREACHABLE}[registry reconcile]",
    ("registry reconcile", 2): f"{BAD_PARAMS}[registry reconcile]",
    ("registry server", 2): f"{USAGE}[registry server --no-such]",
    ("registry webhook install", 0): WEBHOOKS,
    ("registry webhook install", 1): f"{UNREACHABLE}[registry webhook install]",
    ("registry webhook install", 2): f"{BAD_PARAMS}[registry webhook install]",
    ("registry users apply", 2): f"{USAGE}[registry users apply]",
    ("deploy base-image", 0): IMAGE,
    ("deploy base-image", 1): f"{CLI}::test_deploy_base_image_without_buildah_says_what_to_install",
    ("deploy base-image", 2): f"{USAGE}[deploy base-image --no-such]",
    ("deploy containerize", 0): IMAGE,
    ("deploy containerize", 1): f"{EMPTY}[deploy containerize]",
    ("deploy containerize", 2): f"{BAD_PARAMS}[deploy containerize]",
    (
        "deploy monitor-image",
        0,
    ): f"{IMAGES}::test_the_monitor_image_runs_the_drift_job_over_a_real_log",
    ("deploy monitor-image", 1): REFUSED,
    ("deploy monitor-image", 2): REFUSED,
    ("deploy render", 0): f"{K8S}::test_a_full_release_validates_strictly[staging]",
    ("deploy render", 2): f"{K8S}::test_render_refuses_a_tag_no_keys_or_an_unknown_environment",
    ("deploy apply", 1): f"{K8S}::test_apply_and_undo_report_an_unreachable_cluster",
    ("deploy apply", 2): f"{BAD_PARAMS}[deploy apply]",
    ("deploy undo", 1): f"{K8S}::test_apply_and_undo_report_an_unreachable_cluster",
    ("deploy undo", 2): f"{USAGE}[deploy undo --no-such]",
    ("deploy record", 0): DEPLOY,
    ("deploy record", 1): DEPLOY_MISSING,
    ("deploy record", 2): f"{BAD_PARAMS}[deploy record]",
    ("deploy smoke", 0): f"{SMOKE}::test_smoke_passes_against_the_version_it_serves",
    ("deploy smoke", 1): f"{SMOKE}::test_smoke_fails_on_another_version_a_bad_key_or_no_service",
    ("deploy smoke", 2): f"{SMOKE}::test_smoke_fails_on_another_version_a_bad_key_or_no_service",
    ("deploy commit", 0): f"{SMOKE}::test_deploy_commit_names_what_trained_the_version",
    ("deploy commit", 1): f"{SMOKE}::test_deploy_commit_names_what_trained_the_version",
    ("deploy commit", 2): f"{BAD_PARAMS}[deploy commit]",
    ("keys create", 0): f"{KEYS_CLI}::test_keys_create_list_revoke_through_the_cli",
    ("keys create", 2): f"{KEYS_CLI}::test_keys_mistakes_are_2_and_say_what_to_fix",
    ("keys list", 0): f"{KEYS_CLI}::test_keys_create_list_revoke_through_the_cli",
    ("keys list", 2): f"{KEYS_CLI}::test_keys_mistakes_are_2_and_say_what_to_fix",
    ("keys revoke", 0): f"{KEYS_CLI}::test_keys_create_list_revoke_through_the_cli",
    ("keys revoke", 2): f"{KEYS_CLI}::test_keys_mistakes_are_2_and_say_what_to_fix",
    ("deploy record-failure", 0): f"{SMOKE}::{RECORD_FAILURE}",
    ("deploy record-failure", 1): f"{SMOKE}::{RECORD_FAILURE}",
    ("deploy record-failure", 2): f"{SMOKE}::{RECORD_FAILURE}",
    ("monitor run", 0): f"{MONITOR}::test_clean_traffic_is_no_alarm",
    ("monitor run", 1): f"{MONITOR}::test_drifted_traffic_alerts_on_the_right_features",
    ("monitor run", 2): f"{MONITOR}::test_errors_exit_2_and_say_what_to_do",
    ("monitor ui", 1): f"{EMPTY}[monitor ui]",
    ("monitor ui", 2): f"{BAD_PARAMS}[monitor ui]",
    ("monitor ui", 130): f"{MONITOR}::test_stopping_monitor_ui_stops_the_ui_server[2-130]",
    ("monitor ui", 143): f"{MONITOR}::test_stopping_monitor_ui_stops_the_ui_server[15-143]",
    ("approve", 0): f"{GATE}::test_a_reviewer_approves_and_the_gate_moves_champion",
    ("approve", 1): f"{GATE}::test_four_eyes_uses_the_authenticated_login_not_a_typed_name",
    ("registry verify", 0): f"{GATE}::test_a_reviewer_approves_and_the_gate_moves_champion",
    ("registry server", 0): f"{TEAM}::test_a_restart_keeps_users_grants_and_models",
    ("registry server", 1): f"{TEAM}::test_a_server_that_cannot_reach_its_database_stops_with_1",
    (
        "registry users apply",
        0,
    ): f"{TEAM}::test_users_apply_is_idempotent_and_repairs_a_changed_grant",
    ("registry users apply", 1): f"{TEAM}::test_users_apply_needs_the_admin",
    ("webapp build", 0): WEBAPP_BUILD,
    ("webapp build", 2): f"{USAGE}[webapp build --no-such]",
    (
        "webapp containerize",
        0,
    ): f"{IMAGES}::test_the_web_app_image_serves_the_try_it_page_over_a_real_api",
    ("webapp containerize", 1): REFUSED,
    ("webapp containerize", 2): REFUSED,
    ("harvest", 0): HARVEST,
    ("harvest", 2): HARVEST,
    ("registry resign", 0): f"{KEYS}::{ROTATION}",
    ("registry resign", 1): f"{KEYS}::{ROTATION}",
    ("registry resign", 2): f"{KEYS}::test_resign_without_the_gate_key_is_2",
    ("tune", 0): f"{TUNE}::test_a_study_logs_parent_and_child_runs_and_writes_the_best_values",
    ("tune", 1): f"{TUNE}::test_when_no_trial_completes_it_is_1_with_the_first_error",
    ("tune", 2): f"{TUNE}::test_join_of_a_study_that_does_not_exist_is_2",
    ("registry keygen", 0): f"{KEYS}::test_keygen_prints_a_pair_that_signs_and_verifies",
    ("registry keygen", 2): f"{KEYS}::test_keygen_prints_a_pair_that_signs_and_verifies",
}

# Why a documented code has no producing test yet.
NOT_RECORDED = "its test starts the CLI itself (Popen/subprocess); record_exit() there would count"
NO_CLUSTER = "needs a Kubernetes cluster; there is none on the test machines"
SERVE = "`modelyard serve` runs until stopped; no test stops it with Ctrl-C and checks the code"
JOB = "tests/monitoring/test_job.py"

# Documented, and not yet produced (or not yet recorded) by any test: each says why.
# Shrink this; never grow it without a reason a reviewer would accept.
NOT_YET_PRODUCED: dict[tuple[str, int], str] = {
    ("serve", 0): SERVE,
    ("deploy render", 1): "no test makes render fail on the work itself (registry, kustomize)",
    ("deploy apply", 0): NO_CLUSTER,
    ("deploy undo", 0): NO_CLUSTER,
    ("monitor run", 130): f"{JOB}::test_an_interrupted_job_exits_130_not_1: {NOT_RECORDED}",
    ("monitor ui", 0): f"{MONITOR}::test_monitor_ui_shows_the_runs: {NOT_RECORDED}",
    ("webapp build", 1): "no test makes the web app's Bento build fail",
}


def claims(nodeid: str) -> list[tuple[str, int]]:
    """The (command, exit code) pairs the test ``nodeid`` is named for."""
    return [pair for pair, node in PRODUCED_BY.items() if node == nodeid]
