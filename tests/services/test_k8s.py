"""services/k8s as a cluster would receive it: every overlay and every release rendered by
the real `kubectl kustomize` (kustomize v5), validated strictly against the Kubernetes
schema (kubernetes-validate, offline), then checked against the rules a scaling,
locked-down deployment needs. There is no cluster here: `deploy apply` and `deploy undo`
are run with real kubectl against an address where nothing listens.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services import deploy
from tests.conftest import REPO, free_port, modelyard

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (1.27+, kustomize v5) is not installed"
)

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"ghcr.io/acme/models/digits-classifier@{DIGEST}"
WEBAPP = f"ghcr.io/acme/models/modelyard-webapp@sha256:{'cd' * 32}"
MONITOR = f"ghcr.io/acme/models/modelyard-monitor@sha256:{'ef' * 32}"
ID_KEY = "prediction-id-key-of-the-replicas"
KEYS = "key-one,key-two"
# The cluster's kubectl (1.32) and the newest schema the validator knows.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
NAMESPACED = {
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Ingress",
    "PersistentVolumeClaim",
    "CronJob",
    "Secret",
    "ServiceAccount",
}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render(env: str, *extra: str, keys: str = KEYS) -> list[dict[str, Any]]:
    """What `modelyard deploy apply` would apply: `deploy render`, the same code path."""
    done = modelyard(
        REPO,
        "deploy",
        "render",
        "digits-classifier/3",
        "--env",
        env,
        "--image",
        IMAGE,
        *extra,
        env={
            "MODELYARD_API_KEYS": keys,
            "MODELYARD_WEBAPP_SECRET": "form-secret",
            "MODELYARD_ID_KEY": ID_KEY,
        },
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def unreachable_kubeconfig() -> str:
    """A real kubeconfig for an API server on a free loopback port where nothing listens."""
    cluster = {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True}
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "c",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }
    )


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {name: d["spec"]["template"] for name, d in by_kind(docs, "Deployment").items()}
    for name, job in by_kind(docs, "CronJob").items():
        specs[name] = job["spec"]["jobTemplate"]["spec"]["template"]
    return specs


def validate(docs: list[dict[str, Any]]) -> None:
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(
                    f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes "
                    f"{version}: {exc.message} at {list(exc.path)}"
                ) from None


OVERLAYS = sorted((deploy.K8S / "overlays").iterdir())


def test_every_overlay_is_one_of_the_environments() -> None:
    assert [p.name for p in OVERLAYS] == sorted(deploy.ENVIRONMENTS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_renders_and_validates_strictly(e2e_tier: None, overlay: Path) -> None:
    docs = kustomize(overlay)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    validate(docs)
    for component in sorted((deploy.K8S / "components").iterdir()):
        assert (component / "kustomization.yaml").exists(), component


@pytest.mark.parametrize("env", deploy.ENVIRONMENTS)
def test_a_full_release_validates_strictly(e2e_tier: None, env: str) -> None:
    docs = render(env, "--webapp-image", WEBAPP, "--monitor-image", MONITOR)
    assert set(by_kind(docs, "Deployment")) == {"modelyard-api", "modelyard-webapp"}
    assert set(by_kind(docs, "CronJob")) == {"modelyard-drift"}
    validate(docs)


def test_the_validation_can_fail(e2e_tier: None) -> None:
    """A misspelt field (`replica`) and a wrong type are refused, as a cluster would."""
    (deployment,) = by_kind(render("staging"), "Deployment").values()
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(AssertionError, match="'replica' was unexpected"):
        validate([broken])
    ports = [{"name": "http", "containerPort": "3000"}]
    container = {**deployment["spec"]["template"]["spec"]["containers"][0], "ports": ports}
    wrong = yaml.safe_load(yaml.safe_dump(deployment))
    wrong["spec"]["template"]["spec"]["containers"] = [container]
    with pytest.raises(AssertionError, match="'3000' is not of type"):
        validate([wrong])


@pytest.fixture(scope="module", params=deploy.ENVIRONMENTS)
def release(e2e_tier: None, request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    env = str(request.param)
    return env, render(env, "--webapp-image", WEBAPP, "--monitor-image", MONITOR)


def test_every_pod_is_locked_down(release: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = release
    for name, template in pod_specs(docs).items():
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["imagePullSecrets"] == [{"name": "modelyard-registry"}], name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1034, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            assert deploy.BY_DIGEST.match(container["image"]), container["image"]
            ctx = container["securityContext"]
            assert ctx == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in writable, f"{name}: no writable /tmp"
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert set(limits) == set(requests) == {"cpu", "memory"}, name


def test_the_services_probe_scale_and_survive_disruption(
    release: tuple[str, list[dict[str, Any]]],
) -> None:
    env, docs = release
    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    services = by_kind(docs, "Service")
    for name, deployment in by_kind(docs, "Deployment").items():
        spec = deployment["spec"]
        assert "replicas" not in spec, f"{name}: an apply would reset the autoscaler's count"
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
        assert spec["revisionHistoryLimit"] >= 2  # `rollout undo` has something to go back to
        labels = spec["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in spec["selector"]["matchLabels"].items())
        (container,) = spec["template"]["spec"]["containers"]
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        port = container["ports"][0]["containerPort"]
        notes = spec["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(port)
        assert notes["prometheus.io/path"] == "/metrics"
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["metrics"][0]["resource"]["name"] == "cpu"
        assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
        assert services[name]["spec"]["selector"] == spec["selector"]["matchLabels"]
    api = by_kind(docs, "Deployment")["modelyard-api"]["spec"]["template"]["spec"]
    (container,) = api["containers"]
    env_values = {e["name"]: e.get("value") for e in container["env"]}
    workers = env_values["BENTOML_CONFIG_OPTIONS"].removeprefix("services.modelyard.workers=")
    assert int(workers) == int(container["resources"]["limits"]["cpu"])  # one CPU per worker
    api_hpa = hpas["modelyard-api"]["spec"]
    assert api_hpa["minReplicas"] >= (3 if env == "production" else 1)


def test_the_model_is_labelled_and_deployed_by_digest(
    release: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = release
    api = by_kind(docs, "Deployment")["modelyard-api"]
    expected = {deploy.MODEL_LABEL: "digits-classifier", deploy.VERSION_LABEL: "3"}
    for labels in (api["metadata"]["labels"], api["spec"]["template"]["metadata"]["labels"]):
        assert expected.items() <= labels.items()
    assert api["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert IMAGE in api["metadata"]["annotations"]["kubernetes.io/change-cause"]
    assert deploy.MODEL_LABEL not in api["spec"]["selector"]["matchLabels"]  # immutable


CHECKOV = REPO / ".venv-checkov/bin/checkov"
# The scanner's findings we keep, each with its reason (issue 23: fix them or justify them).
JUSTIFIED = {
    # The BentoML image's user is uid 1034 and owns the Bento's files; another uid could
    # not read them. The pods run as that uid, non-root, read-only, all capabilities dropped.
    "CKV_K8S_40": "Containers should run as a high UID",
    # MODELYARD_API_KEYS, MODELYARD_ID_KEY and the web app's secret are read from the
    # environment by the service, as secretKeyRefs (never in the manifest); the named API
    # keys (the sha256 key file) are mounted as a file.
    "CKV_K8S_35": "Prefer using secrets as files over secrets as environment variables",
}


def checkov(folder: Path, *skip: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--skip-download",
         "--quiet", "--compact", "-o", "json", *(["--skip-check", ",".join(skip)] if skip else [])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def test_a_policy_scanner_passes_every_release_but_the_justified_findings(
    e2e_tier: None, tmp_path: Path
) -> None:
    """Issue 23: the rendered releases of both environments pass checkov (pinned, `make
    policy-tools`) but the justified findings above; without the skips it finds exactly
    those (so the scan is live, not silently empty)."""
    if not CHECKOV.exists():
        pytest.skip("checkov is not installed: run `make policy-tools` (make test does)")
    for env in deploy.ENVIRONMENTS:
        docs = render(
            env, "--webapp-image", WEBAPP, "--monitor-image", MONITOR, "--host", "models.acme.dev"
        )
        (tmp_path / f"{env}.yaml").write_text(yaml.safe_dump_all(docs))
    passed = checkov(tmp_path, *JUSTIFIED)
    failed = [(c["check_id"], c["resource"]) for c in passed["results"]["failed_checks"]]
    assert failed == [] and passed["summary"]["passed"] > 200
    everything = checkov(tmp_path)
    found = {c["check_id"] for c in everything["results"]["failed_checks"]}
    assert found == set(JUSTIFIED)


def test_one_tls_ingress_is_the_entry_point(release: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = release
    (ingress,) = by_kind(docs, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"]
    # The cluster-wide, per-client limit (the API's own are per key and per worker).
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(notes["nginx.ingress.kubernetes.io/limit-connections"]) > 0
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    # The web app's pages, each by name: its /metrics is not public (Prometheus only).
    pages = ["/", "/predict", "/feedback", "/batch", "/model", "/static"]
    assert routes == {"/v1": "modelyard-api", **dict.fromkeys(pages, "modelyard-webapp")}
    kinds = {p["path"]: p["pathType"] for p in rule["http"]["paths"]}
    assert {k for k, v in kinds.items() if v == "Prefix"} == {"/v1", "/static"}
    services = by_kind(docs, "Service")
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["port"]["name"] in {
            p["name"] for p in services[backend["name"]]["spec"]["ports"]
        }
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", "only the Ingress is public"


def test_network_policies_admit_only_their_callers(
    release: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = release
    policies = by_kind(docs, "NetworkPolicy")
    api = policies["modelyard-api"]["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"] and api["egress"] == []
    (rule,) = api["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 3000}]
    callers = [
        peer.get("podSelector", {}).get("matchLabels") or peer["namespaceSelector"]["matchLabels"]
        for peer in rule["from"]
    ]
    assert {"app.kubernetes.io/name": "modelyard-webapp"} in callers
    web = policies["modelyard-webapp"]["spec"]
    reaches = [t for e in web["egress"] for t in e["to"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelyard-api"}}} in reaches
    selected = {
        p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name", "*")
        for p in policies.values()
    }
    assert selected == {"*", "modelyard-api", "modelyard-webapp", "modelyard-drift"}
    # Issue 23: the namespace starts closed; Prometheus by its pod label, not its namespace.
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name in ("modelyard-api", "modelyard-webapp"):
        peers = [p for r in policies[name]["spec"]["ingress"] for p in r["from"]]
        monitoring = [p for p in peers if "namespaceSelector" in p and "monitoring" in str(p)]
        assert monitoring and all(
            p.get("podSelector") == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
            for p in monitoring
        ), name
    for name in ("modelyard-webapp", "modelyard-drift"):
        dns = [
            rule for rule in policies[name]["spec"]["egress"]
            if {"protocol": "UDP", "port": 53} in rule["ports"]
        ]  # fmt: skip
        assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in dns[0]["to"], name  # NodeLocal DNS
    drift = policies["modelyard-drift"]["spec"]
    assert drift["ingress"] == []
    assert {p["port"] for r in drift["egress"] for p in r["ports"]} == {53, 443, 5000}


def test_each_replica_logs_to_its_own_folder_and_the_cronjob_reads_all(
    release: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = release
    (claim,) = by_kind(docs, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on any node
    api = by_kind(docs, "Deployment")["modelyard-api"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in api["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    log_dir = env["MODELYARD_LOG_DIR"]["value"]
    assert log_dir.endswith("/$(POD_NAME)")  # Kubernetes expands it per pod
    root = log_dir.rsplit("/", 1)[0]
    mounts = {m["mountPath"]: m for m in api["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in api["volumes"]}
    assert (
        volumes[mounts[root]["name"]]["persistentVolumeClaim"]["claimName"]
        == claim["metadata"]["name"]
    )
    assert api["securityContext"]["fsGroup"] == api["securityContext"]["runAsGroup"]
    job = by_kind(docs, "CronJob")["modelyard-drift"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid" and job["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = job["jobTemplate"]["spec"]["template"]["spec"]
    (drift,) = pod["containers"]
    assert drift["args"][:2] == ["monitor", "run"]
    # The job mounts the log read-only and has no DVC: it detects and alerts; harvesting
    # and retraining are monitor.yml's (README "Deploy"), so a drift verdict here must not
    # try to harvest (that would end every drifted run in exit 2, "harvest failed").
    assert "--no-retrain" in drift["args"]
    assert {e["name"]: e.get("value") for e in drift["env"]}["MODELYARD_LOG_DIR"] == root
    job_mounts = {m["mountPath"]: m for m in drift["volumeMounts"]}
    job_volumes = {v["name"]: v for v in pod["volumes"]}
    assert job_mounts[root]["readOnly"] is True
    source = job_volumes[job_mounts[root]["name"]]["persistentVolumeClaim"]
    assert source["claimName"] == claim["metadata"]["name"]
    # The log is private to its writer (0700/0600): the job reads as the same user.
    assert pod["securityContext"]["runAsUser"] == api["securityContext"]["runAsUser"]


def test_the_api_keys_secret_is_generated_and_referenced(
    release: tuple[str, list[dict[str, Any]]],
) -> None:
    env, docs = release
    (secret,) = by_kind(docs, "Secret").values()
    assert re.fullmatch(r"modelyard-api-keys-[a-z0-9]{10}", secret["metadata"]["name"])
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "keys": KEYS,
        "webapp-key": "key-one",
        "webapp-secret": "form-secret",
        "id-key": ID_KEY,
    }
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for d in by_kind(docs, "Deployment").values()
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs} == set(data)
    # Only the prediction-id key may be absent (then feedback is recorded unverified).
    assert {r["key"] for r in refs if r.get("optional")} == {"id-key"}
    namespace = deploy.namespace(env)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] in NAMESPACED} == {namespace}


def test_named_keys_reach_the_api_as_a_mounted_secret(e2e_tier: None, tmp_path: Path) -> None:
    """Issue 22: MODELYARD_API_KEY_FILE (`modelyard keys`) becomes its own Secret, mounted
    as a folder (an edited Secret reaches running pods) and named by the API's variable;
    a damaged file is refused before anything is rendered."""
    from services import gateway

    file = tmp_path / "api-keys.json"
    gateway.create_key(file, "partner", scopes=["predict"], rate="10/s")
    done = modelyard(
        REPO,
        "deploy",
        "render",
        "digits-classifier/3",
        "--image",
        IMAGE,
        env={"MODELYARD_API_KEYS": KEYS, "MODELYARD_API_KEY_FILE": str(file)},
    )
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    validate(docs)
    secrets = by_kind(docs, "Secret")
    (name,) = [n for n in secrets if n.startswith("modelyard-api-key-file-")]
    stored = base64.b64decode(secrets[name]["data"]["api-keys.json"]).decode()
    assert stored == file.read_text()
    pod = by_kind(docs, "Deployment")[deploy.API]["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["MODELYARD_API_KEY_FILE"] == "/etc/modelyard/api-keys/api-keys.json"
    (mount,) = [m for m in api["volumeMounts"] if m["mountPath"] == "/etc/modelyard/api-keys"]
    assert mount["readOnly"] is True and "subPath" not in mount
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == name
    assert {"tmp", "inference-log"} <= set(volumes)  # the base's volumes are kept
    without = by_kind(render("staging"), "Deployment")[deploy.API]["spec"]["template"]["spec"]
    assert "MODELYARD_API_KEY_FILE" not in {e["name"] for e in without["containers"][0]["env"]}

    file.write_text('{"version": 1, "keys": [{"name": "x"}]}')
    refused = modelyard(
        REPO,
        "deploy",
        "render",
        "digits-classifier/3",
        "--image",
        IMAGE,
        check=False,
        env={"MODELYARD_API_KEYS": KEYS, "MODELYARD_API_KEY_FILE": str(file)},
    )
    assert refused.returncode == 2 and "key #1 is not valid" in refused.stderr


def test_the_environments_host_issuer_and_storage_class_are_its_own(e2e_tier: None) -> None:
    """Issue 23: the Ingress host and TLS issuer and the log volume's storage class come
    from the environment (options or MODELYARD_HOST/_TLS_ISSUER/_STORAGE_CLASS)."""
    docs = render(
        "production",
        "--host",
        "models.acme.dev",
        "--issuer",
        "acme-dns01",
        "--storage-class",
        "efs-sc",
    )
    validate(docs)
    (ingress,) = by_kind(docs, "Ingress").values()
    assert ingress["spec"]["rules"][0]["host"] == "models.acme.dev"
    assert ingress["spec"]["tls"][0]["hosts"] == ["models.acme.dev"]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "acme-dns01"
    (claim,) = by_kind(docs, "PersistentVolumeClaim").values()
    assert claim["spec"]["storageClassName"] == "efs-sc"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    plain = render("production")
    assert (
        "storageClassName"
        not in by_kind(plain, "PersistentVolumeClaim")["modelyard-inference-log"]["spec"]
    )
    bad = modelyard(
        REPO, "deploy", "render", "digits-classifier/3", "--image", IMAGE, "--host", "not a host",
        env={"MODELYARD_API_KEYS": KEYS}, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "a DNS name" in bad.stderr


def test_the_rollout_wait_follows_the_manifests(e2e_tier: None) -> None:
    """The production API may run 10 pods, replaced one at a time, each allowed its
    startup probe's 120 s and its readiness probe's 10 s: far beyond a fixed 300 s."""
    docs = kustomize(deploy.K8S / "overlays/production")
    budget = deploy.rollout_budget(docs, deploy.API, margin_s=0)
    assert budget == 10 * (2 * 60 + 5 * 2)
    staging = deploy.rollout_budget(kustomize(deploy.K8S / "overlays/staging"), deploy.API)
    assert staging < budget


@pytest.mark.parametrize(
    ("strategy", "pods", "waves"),
    [({}, 8, 2), ({"maxSurge": 1, "maxUnavailable": 0}, 8, 8), ({"maxSurge": "50%"}, 8, 2)],
)
def test_the_rollout_wait_counts_waves_of_surge(
    strategy: dict[str, Any], pods: int, waves: int
) -> None:
    probe = {"periodSeconds": 10, "failureThreshold": 3}
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": pods,
            "strategy": {"rollingUpdate": strategy},
            "template": {"spec": {"containers": [{"readinessProbe": probe}]}},
        },
    }
    assert deploy.rollout_budget([deployment], "x", margin_s=0) == waves * 30


def test_apply_prunes_what_a_release_dropped_but_never_secrets_or_the_log(
    e2e_tier: None, tmp_path: Path
) -> None:
    """Issue 23: `kubectl apply` without pruning left dropped objects running. Pruned by
    the release's labels, every kind a release holds is allowlisted but the Secrets (a
    rollback's ReplicaSet needs its keys) and the log's claim (its data outlives releases);
    real kubectl accepts the flags (it fails on the unreachable cluster, not on them)."""
    docs = render("production", "--webapp-image", WEBAPP, "--monitor-image", MONITOR)
    kinds = {
        f"{d['apiVersion'] if '/' in d['apiVersion'] else 'core/' + d['apiVersion']}/{d['kind']}"
        for d in docs
    }
    kept = {"core/v1/Secret", "core/v1/PersistentVolumeClaim"}
    assert set(deploy.PRUNE_ALLOWLIST) == kinds - kept
    release = deploy.Release("production", IMAGE, "digits-classifier", "3", WEBAPP, MONITOR)
    manifests = tmp_path / "release.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    argv = deploy.apply_command("kubectl", manifests, release)
    selector = dict(pair.split("=") for pair in argv[argv.index("--selector") + 1].split(","))
    for doc in docs:  # every object is the release's, so a later release may prune it
        assert selector.items() <= doc["metadata"]["labels"].items(), doc["metadata"]["name"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(unreachable_kubeconfig())
    done = subprocess.run(
        [*argv, "--dry-run=client"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert done.returncode != 0 and "unknown flag" not in done.stderr
    assert "refused" in done.stderr or "connect" in done.stderr, done.stderr


def test_a_rotated_key_renames_the_secret_so_pods_roll(e2e_tier: None) -> None:
    first = by_kind(render("staging"), "Secret")
    second = by_kind(render("staging", keys="key-three,key-one"), "Secret")
    assert first.keys() != second.keys()


def test_the_release_overlay_uses_relative_paths_only(tmp_path: Path) -> None:
    """kustomize v5 refuses an absolute path in resources ("new root ... cannot be
    absolute"): the overlay `deploy apply` writes names the environment relatively."""
    release = deploy.Release("production", IMAGE, "digits-classifier", "3", WEBAPP, MONITOR)
    spec = deploy.overlay(release, tmp_path)
    for path in [*spec["resources"], *spec["components"]]:
        assert not os.path.isabs(path) and (tmp_path / path).resolve().is_dir(), path
    assert spec["images"][0] == {
        "name": "modelyard-api",
        "newName": IMAGE.split("@")[0],
        "digest": DIGEST,
    }


def test_render_refuses_a_tag_no_keys_or_an_unknown_environment(e2e_tier: None) -> None:
    def run(*args: str, keys: str = KEYS) -> subprocess.CompletedProcess[str]:
        return modelyard(
            REPO,
            "deploy",
            "render",
            "digits-classifier/3",
            *args,
            env={"MODELYARD_API_KEYS": keys},
            check=False,
        )

    tag = run("--image", "ghcr.io/acme/models/digits-classifier:v3")
    assert tag.returncode == 2 and "deploy by digest" in " ".join(tag.stderr.split())
    open_api = run("--image", IMAGE, keys=" , ")
    assert open_api.returncode == 2 and "MODELYARD_API_KEYS is empty" in open_api.stderr
    no_secret = run("--image", IMAGE, "--webapp-image", WEBAPP)
    assert no_secret.returncode == 2 and "MODELYARD_WEBAPP_SECRET" in no_secret.stderr
    unknown = run("--image", IMAGE, "--env", "qa")
    assert unknown.returncode == 2 and "expected one of staging, production" in unknown.stderr


def test_apply_and_undo_report_an_unreachable_cluster(e2e_tier: None, tmp_path: Path) -> None:
    """Real kubectl, real kubeconfig, nothing listening: exit 1 naming the failed step,
    and the kubeconfig written for kubectl is gone afterwards."""
    kubeconfig = unreachable_kubeconfig()
    env = {"MODELYARD_API_KEYS": KEYS, "KUBE_CONFIG": kubeconfig, "TMPDIR": str(tmp_path)}
    apply = ("deploy", "apply", "digits-classifier/3", "--env", "staging", "--image", IMAGE)
    placeholder = modelyard(REPO, *apply, env=env, check=False)
    assert placeholder.returncode == 2 and "real host" in " ".join(placeholder.stderr.split())
    applied = modelyard(
        REPO, *apply, "--host", "models.staging.acme.dev", "--timeout", "5", env=env, check=False
    )
    assert applied.returncode == 1, applied.stdout + applied.stderr
    message = " ".join(applied.stderr.split())
    # The revisions are read first: the apply stops there, before changing anything ...
    assert "kubectl get deployment modelyard-api failed" in message
    assert "connection refused" in message
    assert list(tmp_path.iterdir()) == []  # no kubeconfig, overlay or keys left behind
    # ... so it recorded nothing, and the undo has nothing to take back: exit 0.
    undone = modelyard(
        tmp_path, "deploy", "undo", "--env", "staging", "--timeout", "5", env=env, check=False
    )
    said = " ".join(undone.stdout.split())
    assert undone.returncode == 0, said + undone.stderr
    assert "no apply to staging was recorded" in said and "nothing to undo" in said
    # With a record of an apply, the undo asks the cluster first: unreachable is exit 1.
    record = tmp_path / ".modelyard/deploy/production.before.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"namespace": "x", "revisions": {"modelyard-api": 3}}))
    failed = modelyard(
        tmp_path, "deploy", "undo", "--env", "production", "--timeout", "5", env=env, check=False
    )
    assert failed.returncode == 1
    assert "kubectl get deployment modelyard-api failed" in " ".join(failed.stderr.split())
    assert record.is_file()  # kept for the next try


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        # the apply moved the API and created the web app: back to 4; the web app to zero
        (
            {deploy.API: 4, deploy.WEBAPP: None},
            {deploy.API: 5, deploy.WEBAPP: 1},
            {deploy.API: ("undo", 4), deploy.WEBAPP: ("scale-to-zero", None)},
        ),
        # a failed web app rollout: only the web app goes back, the healthy API stays
        (
            {deploy.API: 7, deploy.WEBAPP: 2},
            {deploy.API: 7, deploy.WEBAPP: 3},
            {deploy.API: ("keep", 7), deploy.WEBAPP: ("undo", 2)},
        ),
        # a redeploy (or an apply that changed nothing): nothing is undone
        (
            {deploy.API: 7, deploy.WEBAPP: 2},
            {deploy.API: 7, deploy.WEBAPP: 2},
            {deploy.API: ("keep", 7), deploy.WEBAPP: ("keep", 2)},
        ),
        # a first deploy: nothing to go back to
        (
            {deploy.API: None, deploy.WEBAPP: None},
            {deploy.API: 1, deploy.WEBAPP: None},
            {deploy.API: ("scale-to-zero", None), deploy.WEBAPP: ("keep", None)},
        ),
    ],
    ids=["moved-and-created", "webapp-failed", "unchanged", "first-deploy"],
)
def test_an_undo_takes_back_only_what_the_apply_changed(
    before: dict[str, int | None],
    now: dict[str, int | None],
    expected: dict[str, tuple[str, int | None]],
) -> None:
    steps = deploy.plan_undo(before, now)
    assert {s.deployment: (s.action, s.revision) for s in steps} == expected
    first = [s for s in steps if s.action == "scale-to-zero"]
    assert all("nothing to go back to" in s.why for s in first)


OLD, NEW = "ghcr.io/acme/monitor@sha256:" + "1" * 64, "ghcr.io/acme/monitor@sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("before", "now", "action"),
    [(OLD, NEW, "set-image"), (OLD, OLD, "keep"), (None, NEW, "suspend"), (OLD, None, "keep")],
    ids=["changed", "unchanged", "first-deploy", "absent"],
)
def test_an_undo_takes_the_drift_cronjob_back_only_when_the_apply_changed_it(
    before: str | None, now: str | None, action: str
) -> None:
    """Issue 23: the CronJob has no revisions; its image before the apply is recorded, and
    the undo sets it back (or suspends a first deploy's) only when the apply changed it."""
    step = deploy.plan_cronjob_undo(before, now)
    assert (step.deployment, step.action) == (deploy.CRONJOB, action)
    if action == "set-image":
        assert step.why.endswith(f"back to {OLD}")
