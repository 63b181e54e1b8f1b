"""Roll a pushed image out to Kubernetes: ``modelyard deploy apply``.

``kubectl apply -k <overlay>``: an overlay over ``services/k8s`` whose ``images:``
entry points the Deployment at the pushed image, then ``kubectl rollout status``. The
image itself is built and pushed by ``services/image.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from core.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

K8S_BASE = Path(__file__).resolve().parent / "k8s"
DEPLOYMENT = "modelyard"


def _tool(name: str, why: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"`{name}` is not on PATH: {why}")
    return found


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    log.info("$ %s", " ".join(cmd))
    done = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise DeployError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}")


def overlay(image: str, namespace: str | None = None) -> dict[str, object]:
    """The kustomization that deploys ``image`` over the base in services/k8s."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        raise ConfigError(f"--image {image!r}: expected REGISTRY/NAME:TAG")
    kustomization: dict[str, object] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(K8S_BASE)],
        "images": [{"name": "modelyard", "newName": name, "newTag": tag}],
    }
    if namespace:
        kustomization["namespace"] = namespace
    return kustomization


def apply(
    image: str, namespace: str | None = None, timeout_s: int = 300, kubeconfig: str | None = None
) -> None:
    """``kubectl apply -k`` the overlay and wait for the rollout to finish.

    ``kubeconfig`` is a kubeconfig's content (the workflow's KUBE_CONFIG secret); it is
    written to a private temporary file for kubectl and removed afterwards.
    """
    kubectl = _tool(
        "kubectl",
        "install kubectl and configure cluster credentials "
        "(the deploy workflow skips this step when KUBE_CONFIG is not set).",
    )
    ns = ["--namespace", namespace] if namespace else []
    with tempfile.TemporaryDirectory(prefix="modelyard-deploy-") as tmp:
        env = {**os.environ}
        if kubeconfig:
            config = Path(tmp) / "kubeconfig"
            config.touch(mode=0o600)
            config.write_text(kubeconfig)
            env["KUBECONFIG"] = str(config)
        layer = Path(tmp) / "overlay"
        layer.mkdir()
        (layer / "kustomization.yaml").write_text(
            yaml.safe_dump(overlay(image, namespace), sort_keys=False)
        )
        _run([kubectl, "apply", "-k", str(layer), *ns], "kubectl apply", env)
        _run(
            [
                kubectl,
                "rollout",
                "status",
                f"deployment/{DEPLOYMENT}",
                f"--timeout={timeout_s}s",
                *ns,
            ],
            "kubectl rollout status",
            env,
        )
