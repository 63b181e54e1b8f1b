"""Roll a pushed image out to Kubernetes: ``modelyard deploy render|apply|undo``.

The manifests live in ``services/k8s``: a kustomize ``base`` (the model API, its
autoscaler, disruption budget, network policy, Ingress, the shared inference-log volume
and the drift CronJob), ``overlays/<env>`` (namespace, host, scale) and
``components/webapp`` (the web application, when its image is given). A release adds,
in a temporary overlay over ``overlays/<env>``:

- the image **by digest** (``REGISTRY/NAME@sha256:...``, as ``deploy containerize``
  records it on the version): a tag can move, a digest cannot;
- the model's name and version as labels (and the change-cause ``kubectl rollout
  history`` shows);
- the ``modelyard-api-keys`` Secret from ``MODELYARD_API_KEYS`` (in the workflow, a
  GitHub secret), through a secretGenerator: its name carries a hash of the content, so
  a rotated key rolls the pods;
- with ``MODELYARD_API_KEY_FILE`` (the named keys of ``modelyard keys``: sha256s, scopes,
  limits), the ``modelyard-api-key-file`` Secret holding it, mounted read-only into the
  API's pods (a folder, not a subPath, so an edited Secret reaches running pods) with
  ``MODELYARD_API_KEY_FILE`` pointing at it.

``render`` is ``kubectl kustomize`` of that overlay; ``apply`` records each Deployment's
revision (``before``), applies exactly that and waits for the rollout; ``undo`` takes back
only what that apply changed (``plan_undo``): a Deployment whose revision moved goes back
to the recorded one, an unchanged one is left alone (a redeploy, or an apply that failed
before kubectl changed anything), and a first deploy, with nothing to go back to, is
scaled to zero and said so. Reads ``services/k8s``; writes the temporary overlay (keys at
0600, removed afterwards), the revisions file and the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from core.errors import ConfigError, DeployError
from core.tagkeys import DeployTag

if TYPE_CHECKING:
    from registry.client import Registry

log = logging.getLogger(__name__)

K8S = Path(__file__).resolve().parent / "k8s"
ENVIRONMENTS = ("staging", "production")
API = "modelyard-api"
WEBAPP = "modelyard-webapp"
MONITOR = "modelyard-monitor"
SECRET = "modelyard-api-keys"
KEY_FILE_SECRET = "modelyard-api-key-file"
KEY_FILE_DIR = "/etc/modelyard/api-keys"
KEY_FILE_NAME = "api-keys.json"
MODEL_LABEL = "modelyard.dev/model"
VERSION_LABEL = "modelyard.dev/model-version"
BY_DIGEST = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._:/-]*)@(?P<digest>sha256:[0-9a-f]{64})$")
HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
PLACEHOLDER_HOST = "example.com"
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Release:
    """What one deploy puts into one environment."""

    env: str
    image: str  # the API's image, REGISTRY/NAME@sha256:...
    model: str
    version: str
    webapp_image: str | None = None
    monitor_image: str | None = None  # the project's own image, for the drift CronJob
    # Where the environment lives (deploy.yml: the environment's variables): the Ingress
    # host, cert-manager's ClusterIssuer, the inference log's storage class (ReadWriteMany).
    # Unset: the overlay's placeholders (models.example.com, letsencrypt, the default class).
    host: str | None = None
    issuer: str | None = None
    storage_class: str | None = None

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ConfigError(f"--env {self.env!r}: expected one of {', '.join(ENVIRONMENTS)}")
        if self.host is not None and not HOST.match(self.host):
            raise ConfigError(f"--host {self.host!r}: a DNS name, such as models.acme.com")
        for option, name in (("--issuer", self.issuer), ("--storage-class", self.storage_class)):
            if name is not None and not NAME.match(name):
                raise ConfigError(f"{option} {name!r}: a Kubernetes object name")
        refs = (
            ("--image", self.image),
            ("--webapp-image", self.webapp_image),
            ("--monitor-image", self.monitor_image),
        )
        for option, ref in refs:
            if ref is not None and not BY_DIGEST.match(ref):
                raise ConfigError(
                    f"{option} {ref!r}: deploy by digest, REGISTRY/NAME@sha256:<64 hex> "
                    "(what `modelyard deploy containerize --push` prints and records)"
                )
        for what, value in (("model name", self.model), ("model version", self.version)):
            if not LABEL_VALUE.match(value):
                raise ConfigError(f"{what} {value!r} cannot be a Kubernetes label value")

    @property
    def namespace(self) -> str:
        return namespace(self.env)


@dataclass(frozen=True)
class Secrets:
    """The Secret's content: the API's keys (comma-separated; the first is the web
    application's), the web application's form-signing secret and the prediction-id key
    every API replica shares (optional: without it feedback is recorded unverified)."""

    api_keys: str
    webapp_secret: str | None = None
    id_key: str | None = None  # MODELYARD_ID_KEY: the replicas' shared prediction-id key
    # MODELYARD_API_KEY_FILE's content: the named keys (`modelyard keys`), checked.
    api_key_file: str | None = None

    def key_file(self) -> str | None:
        """The key file's content, once the gateway has read it as the service will."""
        if self.api_key_file is None:
            return None
        from services import gateway

        try:
            gateway.parse_keys(self.api_key_file, source=KEY_FILE_NAME)
        except gateway.KeyFileError as exc:
            raise ConfigError(f"MODELYARD_API_KEY_FILE: {exc}") from None
        return self.api_key_file

    def env_file(self, webapp: bool) -> str:
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if not keys:
            raise ConfigError(
                "MODELYARD_API_KEYS is empty: the API would be open to anyone. Set it (in "
                "the deploy workflow: the repository secret MODELYARD_API_KEYS)"
            )
        if any("\n" in k or "=" in k for k in keys):
            raise ConfigError("MODELYARD_API_KEYS: a key may not hold '=' or a line break")
        lines = [f"keys={','.join(keys)}"]
        if self.id_key:
            if "\n" in self.id_key:
                raise ConfigError("MODELYARD_ID_KEY may not hold a line break")
            lines.append(f"id-key={self.id_key}")
        if webapp:
            if not self.webapp_secret:
                raise ConfigError(
                    "MODELYARD_WEBAPP_SECRET is not set: the web application's replicas "
                    "need one shared secret to sign their forms"
                )
            lines += [f"webapp-key={keys[0]}", f"webapp-secret={self.webapp_secret}"]
        return "\n".join(lines) + "\n"


def namespace(env: str) -> str:
    """The namespace ``overlays/<env>`` deploys into."""
    spec = yaml.safe_load((K8S / "overlays" / env / "kustomization.yaml").read_text())
    return str(spec["namespace"])


def key_file_patch() -> dict[str, Any]:
    """The API Deployment reads the named keys from the Secret, mounted as a folder."""
    container = {
        "name": "api",
        "env": [{"name": "MODELYARD_API_KEY_FILE", "value": f"{KEY_FILE_DIR}/{KEY_FILE_NAME}"}],
        "volumeMounts": [{"name": "api-key-file", "mountPath": KEY_FILE_DIR, "readOnly": True}],
    }
    volume = {"name": "api-key-file", "secret": {"secretName": KEY_FILE_SECRET}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": API},
        "spec": {"template": {"spec": {"containers": [container], "volumes": [volume]}}},
    }


def site_patches(release: Release) -> list[dict[str, Any]]:
    """The environment's own host, TLS issuer and storage class over the overlay's."""
    patches: list[dict[str, Any]] = []
    ingress = {"kind": "Ingress", "name": "modelyard"}
    if release.host:
        ops = [
            {"op": "replace", "path": "/spec/tls/0/hosts/0", "value": release.host},
            {"op": "replace", "path": "/spec/rules/0/host", "value": release.host},
        ]
        patches.append({"target": ingress, "patch": yaml.safe_dump(ops)})
    if release.issuer:
        op = {
            "op": "replace",
            "path": "/metadata/annotations/cert-manager.io~1cluster-issuer",
            "value": release.issuer,
        }
        patches.append({"target": ingress, "patch": yaml.safe_dump([op])})
    if release.storage_class:
        op = {"op": "add", "path": "/spec/storageClassName", "value": release.storage_class}
        target = {"kind": "PersistentVolumeClaim", "name": "modelyard-inference-log"}
        patches.append({"target": target, "patch": yaml.safe_dump([op])})
    return patches


def rollout_budget(docs: list[dict[str, Any]], deployment: str, *, margin_s: int = 60) -> int:
    """Seconds to wait for ``deployment``'s rollout, from the rendered manifests: the
    most pods it may run (its autoscaler's maximum, else its replicas), replaced
    ``maxSurge`` at a time (as maxUnavailable 0 does), each given its startup probe's
    whole budget (period x failures) and its readiness probe's, plus ``margin_s``."""
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    spec = found[("Deployment", deployment)]["spec"]
    hpa = [
        d for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
        and d["spec"]["scaleTargetRef"]["name"] == deployment
    ]  # fmt: skip
    pods = int(hpa[0]["spec"]["maxReplicas"]) if hpa else int(spec.get("replicas", 1))
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    surge = _count(rolling.get("maxSurge", "25%"), pods)
    unavailable = _count(rolling.get("maxUnavailable", "25%"), pods, up=False)
    step = max(1, surge + unavailable)
    container = spec["template"]["spec"]["containers"][0]
    per_pod = sum(
        int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))
        + int(probe.get("initialDelaySeconds", 0))
        for probe in (container.get("startupProbe"), container.get("readinessProbe"))
        if probe
    )
    waves = -(-pods // step)
    return waves * per_pod + margin_s


def _count(value: int | str, pods: int, *, up: bool = True) -> int:
    """maxSurge/maxUnavailable as a count: a percentage rounds up (surge) or down."""
    if isinstance(value, str) and value.endswith("%"):
        share = pods * int(value[:-1]) / 100
        return int(-(-share // 1)) if up else int(share)
    return int(value)


def overlay(release: Release, folder: Path, *, key_file: bool = False) -> dict[str, Any]:
    """The kustomization of one release, written in ``folder``: every path in it is
    relative to ``folder`` (kustomize v5 refuses an absolute one). ``key_file``: the
    folder holds api-keys.json, the named keys, for their own Secret."""
    images, components = [], []
    for placeholder, ref, component in (
        (API, release.image, None),
        (WEBAPP, release.webapp_image, "webapp"),
        (MONITOR, release.monitor_image, "drift"),
    ):
        if ref is None:
            continue
        name, _, digest = ref.partition("@")
        images.append({"name": placeholder, "newName": name, "digest": digest})
        if component:
            components.append(os.path.relpath(K8S / "components" / component, folder))
    labels = {MODEL_LABEL: release.model, VERSION_LABEL: release.version}
    cause = f"{release.model} v{release.version} ({release.image})"
    model_patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": API,
            "labels": labels,
            "annotations": {"kubernetes.io/change-cause": cause},
        },
        "spec": {"template": {"metadata": {"labels": labels}}},
    }
    spec: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": release.namespace,
        "resources": [os.path.relpath(K8S / "overlays" / release.env, folder)],
        "components": components,
        "labels": [
            {
                "pairs": {
                    "app.kubernetes.io/part-of": "modelyard",
                    "app.kubernetes.io/instance": release.env,
                },
                "includeTemplates": True,
            }
        ],
        "images": images,
        "secretGenerator": [{"name": SECRET, "envs": ["api-keys.env"]}],
        "patches": [{"patch": yaml.safe_dump(model_patch, sort_keys=False)}],
    }
    spec["patches"].extend(site_patches(release))
    if key_file:
        spec["secretGenerator"].append({"name": KEY_FILE_SECRET, "files": [KEY_FILE_NAME]})
        spec["patches"].append({"patch": yaml.safe_dump(key_file_patch(), sort_keys=False)})
    if not components:
        del spec["components"]
    return spec


@contextmanager
def _overlay_dir(release: Release, secrets: Secrets) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modelyard-deploy-") as tmp:
        folder = Path(tmp) / "overlay"
        folder.mkdir()
        keys = folder / "api-keys.env"
        keys.touch(mode=0o600)
        keys.write_text(secrets.env_file(webapp=release.webapp_image is not None))
        named = secrets.key_file()
        if named is not None:
            file = folder / KEY_FILE_NAME
            file.touch(mode=0o600)
            file.write_text(named)
        (folder / "kustomization.yaml").write_text(
            yaml.safe_dump(overlay(release, folder, key_file=named is not None), sort_keys=False)
        )
        yield folder


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise DeployError("`kubectl` is not on PATH: install kubectl 1.27+ (kustomize v5)")
    return found


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    log.info("$ %s", " ".join(cmd))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeployError(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()}"
        )
    if done.stderr:
        sys.stderr.write(done.stderr)
    return done.stdout


def render(release: Release, secrets: Secrets) -> str:
    """The manifests ``apply`` would apply, as YAML (``kubectl kustomize``)."""
    kubectl = _kubectl()
    with _overlay_dir(release, secrets) as folder:
        return _run([kubectl, "kustomize", str(folder)], "kubectl kustomize")


@contextmanager
def _cluster(kubeconfig: str | None) -> Iterator[dict[str, str]]:
    """kubectl's environment: ``kubeconfig`` (a kubeconfig's content, the workflow's
    KUBE_CONFIG secret) in a private temporary file, else kubectl's own configuration."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="modelyard-kube-") as tmp:
        if kubeconfig:
            config = Path(tmp) / "kubeconfig"
            config.touch(mode=0o600)
            config.write_text(kubeconfig)
            env["KUBECONFIG"] = str(config)
        yield env


DEPLOYMENTS = (API, WEBAPP)
REVISION = r"{.metadata.annotations.deployment\.kubernetes\.io/revision}"


def before_file(env_name: str) -> Path:
    """Where ``apply`` records the revisions it found (``undo`` reads them): in the
    working directory, as a workflow's later step sees it."""
    return Path(".modelyard") / "deploy" / f"{env_name}.before.json"


@dataclass(frozen=True)
class UndoStep:
    deployment: str  # or the drift CronJob
    action: (
        str  # "undo" (to ``revision``), "scale-to-zero", "keep"; CronJob: "set-image", "suspend"
    )
    revision: int | None
    why: str


def plan_undo(before: dict[str, int | None], now: dict[str, int | None]) -> list[UndoStep]:
    """What taking back a failed apply means for each Deployment, from its revision
    before the apply and now (None: absent). Only what the apply changed is touched."""
    steps = []
    for name in sorted(set(before) | set(now)):
        was, nowrev = before.get(name), now.get(name)
        if nowrev is None:
            steps.append(UndoStep(name, "keep", None, "absent now: nothing to undo"))
        elif was is None:
            steps.append(
                UndoStep(
                    name,
                    "scale-to-zero",
                    None,
                    f"first deploy (revision {nowrev}), nothing to go back to: scaled to 0 "
                    "replicas; fix the release and deploy again",
                )
            )
        elif was == nowrev:
            steps.append(UndoStep(name, "keep", was, f"unchanged by the apply (revision {was})"))
        else:
            steps.append(UndoStep(name, "undo", was, f"revision {nowrev} -> back to {was}"))
    return steps


CRONJOB = "modelyard-drift"
CRONJOB_IMAGE = r"{.spec.jobTemplate.spec.template.spec.containers[0].image}"


def plan_cronjob_undo(before: str | None, now: str | None) -> UndoStep:
    """What taking back a failed apply means for the drift CronJob (it has no revisions:
    its image before the apply and now; None: absent). Only a change is taken back."""
    if now is None:
        return UndoStep(CRONJOB, "keep", None, "absent now: nothing to undo")
    if before is None:
        return UndoStep(
            CRONJOB, "suspend", None,
            f"first deploy ({now}), nothing to go back to: suspended; fix the release and "
            "deploy again",
        )  # fmt: skip
    if before == now:
        return UndoStep(CRONJOB, "keep", None, f"unchanged by the apply ({now})")
    return UndoStep(CRONJOB, "set-image", None, f"{now} -> back to {before}")


def cronjob_image(namespace_name: str, env: dict[str, str]) -> str | None:
    out = _run(
        [_kubectl(), "get", "cronjob", CRONJOB, "--namespace", namespace_name,
         "--ignore-not-found", "--output", f"jsonpath={CRONJOB_IMAGE}"],
        f"kubectl get cronjob {CRONJOB}",
        env,
    ).strip()  # fmt: skip
    return out or None


def revisions(namespace_name: str, env: dict[str, str]) -> dict[str, int | None]:
    """Each Deployment's current revision in ``namespace_name`` (None: it does not exist)."""
    kubectl = _kubectl()
    found: dict[str, int | None] = {}
    for name in DEPLOYMENTS:
        out = _run(
            [kubectl, "get", "deployment", name, "--namespace", namespace_name,
             "--ignore-not-found", "--output", f"jsonpath={REVISION}"],
            f"kubectl get deployment {name}",
            env,
        ).strip()  # fmt: skip
        found[name] = int(out) if out.isdigit() else None
    return found


# What a release may remove when it no longer holds it. Not Secrets (the API's previous
# keys Secret is what `kubectl rollout undo` to the previous ReplicaSet needs) and never the
# inference log's PersistentVolumeClaim (its data outlives every release).
PRUNE_ALLOWLIST = (
    "apps/v1/Deployment",
    "core/v1/Service",
    "core/v1/ServiceAccount",
    "autoscaling/v2/HorizontalPodAutoscaler",
    "policy/v1/PodDisruptionBudget",
    "networking.k8s.io/v1/NetworkPolicy",
    "networking.k8s.io/v1/Ingress",
    "batch/v1/CronJob",
)


def apply_command(kubectl: str, manifests: Path, release: Release) -> list[str]:
    """``kubectl apply`` of the rendered release that also removes what an earlier
    release of this environment made and this one no longer holds (a web app or drift
    job left out, a renamed policy): pruned by the release's labels, kinds allowlisted."""
    selector = f"app.kubernetes.io/part-of=modelyard,app.kubernetes.io/instance={release.env}"
    return [
        kubectl,
        "apply",
        "-f",
        str(manifests),
        "--namespace",
        release.namespace,
        "--prune",
        "--selector",
        selector,
        *(f"--prune-allowlist={kind}" for kind in PRUNE_ALLOWLIST),
    ]


def apply(
    release: Release,
    secrets: Secrets,
    *,
    timeout_s: int | None = None,
    kubeconfig: str | None = None,
    record: Path | None = None,
) -> None:
    """Record each Deployment's revision in ``record`` (default ``before_file``), apply
    the rendered release and wait until every Deployment in it has rolled out (for
    ``timeout_s``, else each its ``rollout_budget``). Refuses without the environment's
    real host.

    Raises DeployError when kubectl fails or the rollout does not finish in time; the
    caller decides whether to ``undo``."""
    kubectl = _kubectl()
    if not release.host or release.host.endswith(PLACEHOLDER_HOST):
        raise ConfigError(
            f"--host {release.host or '(unset)'}: give the {release.env} environment's real "
            "host (deploy.yml: the environment's variable HOST); the overlay's "
            f"{PLACEHOLDER_HOST} would get no certificate and no traffic"
        )
    manifests = render(release, secrets)
    docs = [doc for doc in yaml.safe_load_all(manifests) if doc]
    ns = ["--namespace", release.namespace]
    record = record or before_file(release.env)
    with _cluster(kubeconfig) as env, tempfile.TemporaryDirectory() as tmp:
        found = revisions(release.namespace, env)
        drift = cronjob_image(release.namespace, env)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps({"namespace": release.namespace, "revisions": found, "cronjob": drift})
        )
        rendered = Path(tmp) / "release.yaml"
        rendered.touch(mode=0o600)  # it holds the keys
        rendered.write_text(manifests)
        _run(apply_command(kubectl, rendered, release), "kubectl apply", env)
        for deployment in (API, WEBAPP) if release.webapp_image else (API,):
            wait = timeout_s or rollout_budget(docs, deployment)
            log.info("waiting up to %d s for the rollout of %s", wait, deployment)
            _run(
                [
                    kubectl,
                    "rollout",
                    "status",
                    f"deployment/{deployment}",
                    *ns,
                    f"--timeout={wait}s",
                ],
                f"rollout of {deployment}",
                env,
            )


def undo(
    env_name: str,
    *,
    timeout_s: int = 300,
    kubeconfig: str | None = None,
    record: Path | None = None,
) -> list[UndoStep]:
    """Take back what the last ``apply`` to ``env_name`` changed (``plan_undo`` on the
    revisions it recorded and the ones now), and wait for what was undone. No record: the
    apply stopped before it reached the cluster, and nothing is done."""
    if env_name not in ENVIRONMENTS:
        raise ConfigError(f"--env {env_name!r}: expected one of {', '.join(ENVIRONMENTS)}")
    record = record or before_file(env_name)
    if not record.is_file():
        return []
    saved = json.loads(record.read_text())
    before = {k: (int(v) if v is not None else None) for k, v in saved["revisions"].items()}
    kubectl = _kubectl()
    ns = ["--namespace", namespace(env_name)]
    with _cluster(kubeconfig) as env:
        steps = plan_undo(before, revisions(namespace(env_name), env))
        if "cronjob" in saved:  # a record from before the CronJob was recorded: left alone
            drift = plan_cronjob_undo(saved["cronjob"], cronjob_image(namespace(env_name), env))
            steps.append(drift)
            cronjob = [f"cronjob/{CRONJOB}", *ns]
            if drift.action == "set-image":
                image = f"drift={saved['cronjob']}"
                _run([kubectl, "set", "image", *cronjob, image], "kubectl set image", env)
            elif drift.action == "suspend":
                patch = '{"spec": {"suspend": true}}'
                _run(
                    [kubectl, "patch", *cronjob, "--type=merge", "-p", patch], "kubectl patch", env
                )
        for step in steps:
            if step.deployment == CRONJOB:
                continue
            target = f"deployment/{step.deployment}"
            if step.action == "undo":
                _run(
                    [kubectl, "rollout", "undo", target, f"--to-revision={step.revision}", *ns],
                    "kubectl rollout undo",
                    env,
                )
                _run(
                    [kubectl, "rollout", "status", target, *ns, f"--timeout={timeout_s}s"],
                    "rollout (undo)",
                    env,
                )
            elif step.action == "scale-to-zero":
                _run([kubectl, "scale", target, "--replicas=0", *ns], "kubectl scale", env)
    record.unlink()
    return steps


def record_failure(
    registry: Registry, name: str, version: str, *, env: str, reason: str, by: str
) -> None:
    """A rollout of ``version`` to ``env`` failed (and was undone): say so on the version
    and in the model's audit log, so nobody mistakes it for a deployed one."""
    from registry import promotion

    if env not in ENVIRONMENTS:
        raise ConfigError(f"--env {env!r}: expected one of {', '.join(ENVIRONMENTS)}")
    registry.version(name, version)  # refuses a version that does not exist
    at = datetime.now(UTC).isoformat(timespec="seconds")
    registry.set_version_tags(
        name,
        version,
        {DeployTag.FAILED_ENV: env, DeployTag.FAILED_AT: at, DeployTag.FAILED_REASON: reason},
    )
    promotion.audit(registry, name, "deploy-failed", version=version, env=env, reason=reason, by=by)
