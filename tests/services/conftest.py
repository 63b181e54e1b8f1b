"""Servers shared by the client and web app tests (tests/services/live.py): the digits
model is trained and served once per session, for both; and the image tests' buildah
storage and OCI registry (tests/services/oci.py), one per session."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, kill_tree
from tests.services.live import LiveApi, registered, serve_model
from tests.services.oci import missing_tools, storage_env, wait_for


@pytest.fixture(scope="session")
def digits_api(
    server_tier: None, trained_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    """A real `bentoml serve` of a registered digits CNN (key: live.API_KEY)."""
    base = tmp_path_factory.mktemp("digits-api")
    project = registered(base / "project", "digits", template=trained_template)
    api = serve_model(project, base)
    yield api
    api.server.stop()


@pytest.fixture(scope="session")
def buildah_env(
    image_tier: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Buildah's own image storage for the session (test_image.py and
    test_images_more.py run on one xdist worker, the group "image", and share it): overlay where the kernel lets us
    mount it (a container shares its image's layers), else vfs (full copies, slower)."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("containers")
    env = storage_env(root, "overlay")
    probe = subprocess.run(["buildah", "from", "scratch"], env=env, capture_output=True, text=True)
    mounted = (
        probe.returncode == 0
        and subprocess.run(
            ["buildah", "mount", probe.stdout.strip()], env=env, capture_output=True
        ).returncode
        == 0
    )
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True)
    if not mounted:
        shutil.rmtree(root, ignore_errors=True)
        env = storage_env(root, "vfs")
    yield env
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True)
    subprocess.run(["buildah", "rmi", "--all", "--force"], env=env, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_registry(
    buildah_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Debian's docker-registry (the CNCF distribution registry) on a free loopback port."""
    folder = tmp_path_factory.mktemp("registry")
    addr = f"127.0.0.1:{free_port()}"
    config = folder / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
                "http": {"addr": addr},
            }
        )
    )
    with open(folder / "registry.log", "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=out)
    try:
        wait_for(f"http://{addr}/v2/", proc, "docker-registry", 20)
        yield addr
    finally:
        kill_tree(proc.pid)
