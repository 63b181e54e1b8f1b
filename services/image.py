"""The project's three images, built, pushed and known by their digests.

    modelyard deploy containerize NAME/VERSION --push REGISTRY [--backend buildah]
    modelyard webapp containerize --push REGISTRY [--backend buildah]
    modelyard deploy monitor-image --push REGISTRY [--backend buildah]

The model API and the web app are Bentos (``containerize``); the drift job is the project
itself, built from ``monitoring/Containerfile`` (``monitor_image``). For the Bentos:

1. ``bentoml containerize`` builds the Bento's own generated Dockerfile with the chosen
   backend: ``docker`` (GitHub's runners) or ``buildah`` (no daemon; runs ``RUN`` steps
   with ``BUILDAH_ISOLATION=chroot``, which is how the tests build here);
2. ``--base-image IMAGE`` builds FROM a local image instead of the Dockerfile's
   ``python:3.11-slim`` (tagged under that name in the builder's local storage, built with
   pull-never): for machines that cannot reach Docker Hub. ``base_image()`` builds a
   compatible one from Debian packages with mmdebstrap;
3. the image is pushed and its manifest digest read back from the push;
   ``REGISTRY/NAME@sha256:...`` is what Kubernetes deploys (``services/deploy.py``).

The drift job's image is built from a context holding only its inputs (``monitor_inputs``:
the Containerfile, its pinned requirements, the project's packages, params.yaml, the GX
suites) and tagged with their hash (plus the base image's id with ``--base-image``): an
image of that tag already in the builder's storage is not built again, only pushed.
``--base-image`` works as for the Bentos (tagged as the Containerfile's FROM).

The image is slimmed by ``services/image-slim.sh`` (the Bento's ``docker.setup_script``,
run after the Python packages are installed): BentoML's Dockerfile installs
build-essential and git for source builds, and the service needs neither at run time.
buildah commits a build as one layer, so removing them makes the image smaller.

Reads the BentoML store (``$BENTOML_HOME``) and the builder's local image storage;
writes images there and to the registry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core import tools
from core.errors import ConfigError, DeployError, RegistryError
from core.tagkeys import DeployTag

if TYPE_CHECKING:
    from registry.client import Registry, Version

log = logging.getLogger(__name__)

Backend = Literal["docker", "buildah"]
BACKENDS: tuple[Backend, ...] = ("docker", "buildah")
TAG = BENTO_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]*:[A-Za-z0-9_.-]+$")
REGISTRY_PATH = re.compile(r"^[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# What BentoML's Dockerfile needs from `python:3.11-slim`, from Debian's own packages:
# python3.11 (the Bento's venv links to it), pip (installs uv), venv, the CA store.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3-venv", "python3-pip", "ca-certificates")
BASE_TAG = "localhost/modelyard-base:bookworm-py3.11"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_CONTAINERFILE = """\
# python:3.11-slim's role, from Debian packages (built by `modelyard deploy base-image`).
FROM scratch
ADD rootfs.tar /
# The host's CA bundle: TLS to PyPI may pass a proxy whose CA only the host trusts.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python3 \\
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python
ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1
CMD ["python3"]
"""


@dataclass(frozen=True)
class Image:
    """A built (and maybe pushed) image of one Bento or of the drift job's Containerfile."""

    tag: str  # NAME:TAG it was built from: the Bento's tag, or the job's content tag
    ref: str  # REGISTRY/NAME:TAG as built
    digest: str | None  # the manifest digest in the registry, after a push
    seconds: float  # build time (0 when an unchanged image was reused)
    built: bool = True  # False: an image of this content tag was in storage already

    @property
    def by_digest(self) -> str:
        """``REGISTRY/NAME@sha256:...``: the reference that always means these bytes."""
        if self.digest is None:
            raise DeployError(f"{self.ref} was not pushed: it has no registry digest")
        return f"{self.ref.rpartition(':')[0]}@{self.digest}"


@dataclass(frozen=True)
class BaseImage:
    tag: str
    rootfs: Path
    reused_rootfs: bool


def image_ref(registry: str | None, tag: str) -> str:
    """``ghcr.io/Acme/Models`` + ``digits-classifier:v3-ab12`` ->
    ``ghcr.io/acme/models/digits-classifier:v3-ab12`` (registries want lower case);
    without a registry, ``localhost/digits-classifier:v3-ab12``."""
    if not TAG.match(tag):
        raise ConfigError(f"{tag!r}: expected an image tag NAME:VERSION")
    return f"{registry_prefix(registry)}/{tag}"


def registry_prefix(registry: str | None) -> str:
    """``ghcr.io/Acme/Models`` -> ``ghcr.io/acme/models``; ``localhost`` without one; a
    ConfigError for what is not a registry path."""
    prefix = (registry or "localhost").rstrip("/").lower()
    if not REGISTRY_PATH.match(prefix):
        raise ConfigError(
            f"--push {registry!r}: expected a registry path such as ghcr.io/acme/models"
        )
    return prefix


def _tool(name: str, why: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"`{name}` is not on PATH: {why}")
    return found


def _run(
    cmd: list[str], what: str, env: dict[str, str] | None = None, *, capture: bool = False
) -> str:
    """Run a tool; its output goes to stderr (the build log) unless ``capture``, when its
    stdout is returned."""
    log.info("$ %s", " ".join(cmd))
    out = subprocess.PIPE if capture else sys.stderr
    done = subprocess.run(cmd, env=env, stdout=out, stderr=sys.stderr, text=True)
    if done.returncode != 0:
        raise DeployError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}")
    return done.stdout or ""


def _builder(backend: Backend) -> str:
    if backend == "docker":
        return _tool(
            "docker",
            "the docker backend needs a Docker engine (GitHub's runners "
            "have one); without one use --backend buildah",
        )
    return _tool("buildah", "install it (`make system-tools`: apt-get install buildah)")


def dockerfile_base(bento_tag: str) -> str:
    """The image the Bento's generated Dockerfile starts FROM, fully qualified."""
    import bentoml

    try:
        bento = bentoml.get(bento_tag)
    except bentoml.exceptions.NotFound as exc:
        raise ConfigError(
            f"no Bento {bento_tag} in the BentoML store ($BENTOML_HOME): build it first"
        ) from exc
    return from_line(Path(bento.path_of("env/docker/Dockerfile")), bento_tag)


def from_line(containerfile: Path, what: str) -> str:
    """The image a Dockerfile/Containerfile starts FROM (its first FROM), fully qualified."""
    found = re.search(r"^FROM\s+(\S+)", containerfile.read_text(), flags=re.M)
    if found is None:
        raise DeployError(f"{what}: its Dockerfile has no FROM line")
    return qualify(found[1])


def builder(backend: str) -> str:
    """The image builder's binary for ``--backend``: a ConfigError for an unknown backend,
    a DeployError (what to install) when it is not on PATH. Checked before any build."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return _builder(backend)


def check_target(*, backend: str, registry: str | None) -> None:
    """The builder and the registry path, checked before anything is built: a typo costs a
    second, not a Bento build."""
    builder(backend)
    registry_prefix(registry)


def _use_base(tool: str, backend: Backend, base_image: str, stock: str) -> None:
    """Tag the local ``base_image`` as ``stock`` (the FROM) in the builder's storage, so
    the build starts from it without pulling."""
    log.info("building FROM %s in place of %s", base_image, stock)
    _run([tool, "tag", base_image, stock], f"{backend} tag {base_image}")


def qualify(name: str) -> str:
    """Docker Hub's short names in full: ``python:3.11-slim`` ->
    ``docker.io/library/python:3.11-slim`` (what buildah's storage calls it)."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def containerize(
    bento_tag: str,
    *,
    backend: Backend = "docker",
    registry: str | None = None,
    base_image: str | None = None,
    tls_verify: bool = True,
) -> Image:
    """Build the Bento's image with ``bentoml containerize``; push it when ``registry``
    is given and return it with its manifest digest."""
    tool = builder(backend)
    ref = image_ref(registry, bento_tag)
    bentoml_bin = tools.binary("bentoml")
    opts: list[str] = []
    if base_image:
        _use_base(tool, backend, base_image, dockerfile_base(bento_tag))
        if backend == "buildah":
            opts += ["--opt", "pull-never"]
    started = time.perf_counter()
    _run(
        [bentoml_bin, "containerize", bento_tag, "--backend", backend, "--image-tag", ref, *opts],
        "bentoml containerize",
        tools.env(),
    )
    seconds = time.perf_counter() - started
    digest = push(ref, backend=backend, tls_verify=tls_verify) if registry else None
    return Image(bento_tag, ref, digest, seconds)


def push(ref: str, *, backend: Backend, tls_verify: bool = True) -> str:
    """Push ``ref`` to its registry; the manifest digest the registry now holds."""
    tool = _builder(backend)
    if backend == "buildah":
        with tempfile.TemporaryDirectory(prefix="modelyard-push-") as tmp:
            digest_file = Path(tmp) / "digest"
            _run(
                [
                    tool,
                    "push",
                    f"--tls-verify={str(tls_verify).lower()}",
                    "--digestfile",
                    str(digest_file),
                    ref,
                    f"docker://{ref}",
                ],
                "buildah push (is the registry login done?)",
            )
            digest = digest_file.read_text().strip()
    else:
        if not tls_verify:
            raise ConfigError(
                "--no-tls-verify is for buildah; docker reads its own insecure-registries setting"
            )
        _run([tool, "push", ref], "docker push (is the registry login done?)")
        repository = ref.rpartition(":")[0]
        digests = _run(
            [tool, "inspect", "--format", '{{join .RepoDigests "\\n"}}', ref],
            "docker inspect",
            capture=True,
        ).split()
        found = [d.rpartition("@")[2] for d in digests if d.rpartition("@")[0] == repository]
        digest = found[0] if found else ""
    if not DIGEST.match(digest):
        raise DeployError(f"pushed {ref} but could not read its digest (got {digest!r})")
    return digest


def base_image(
    tag: str = BASE_TAG,
    *,
    cache_dir: Path | None = None,
    ca_bundle: Path | None = HOST_CA_BUNDLE,
) -> BaseImage:
    """Build a python:3.11-slim stand-in from Debian packages into buildah's storage.

    The root filesystem (mmdebstrap, ~1 min) is cached in ``cache_dir`` under a name
    derived from the suite and the package list, so later builds only re-run the short
    Containerfile (~10 s).
    """
    buildah = _tool("buildah", "install it (`make system-tools`: apt-get install buildah)")
    cache_dir = cache_dir or Path.home() / ".cache" / "modelyard"
    key = hashlib.sha256(" ".join((BASE_SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    context = cache_dir / f"base-{BASE_SUITE}-{key}"
    rootfs = context / "rootfs.tar"
    reused = rootfs.exists()
    if not reused:
        mmdebstrap = _tool(
            "mmdebstrap",
            "install it (`make system-tools`: apt-get install "
            "mmdebstrap), or pass --base-image an image you have",
        )
        context.mkdir(parents=True, exist_ok=True)
        partial = context / f".rootfs.{os.getpid()}.tar"
        try:
            _run(
                [
                    mmdebstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    BASE_SUITE,
                    str(partial),
                ],
                "mmdebstrap",
            )
            os.replace(partial, rootfs)  # a crash never leaves a half tarball under the name
        finally:
            partial.unlink(missing_ok=True)
    bundle = context / "ca-certificates.crt"
    if ca_bundle is not None and ca_bundle.exists():
        shutil.copyfile(ca_bundle, bundle)
    elif not bundle.exists():
        raise ConfigError(f"no CA bundle at {ca_bundle}: pass one the build can trust")
    (context / "Containerfile").write_text(BASE_CONTAINERFILE)
    _run(
        [
            buildah,
            "build",
            "--layers=false",
            "-f",
            str(context / "Containerfile"),
            "-t",
            tag,
            str(context),
        ],
        "buildah build (base image)",
    )
    return BaseImage(tag, rootfs, reused)


# -- the drift job's image -----------------------------------------------------------------

MONITOR_NAME = "modelyard-monitor"
MONITOR_CONTAINERFILE = "monitoring/Containerfile"
MONITOR_REQUIREMENTS = "monitoring/requirements.txt"
# What the image carries (the Containerfile's COPY lines): the packages' Python files,
# the params and the GX suites `monitor run` validates the sample with.
MONITOR_PACKAGES = ("core", "registry", "pipelines", "services", "monitoring", "modelyard")
MONITOR_FILES = ("params.yaml", MONITOR_CONTAINERFILE, MONITOR_REQUIREMENTS)
MONITOR_GLOBS = ("data/expectations/*.json",)


def monitor_inputs(root: Path) -> list[Path]:
    """Every file the drift job's image is built from, relative to ``root``, sorted (what
    its content tag hashes, and all its build context holds)."""
    found = {Path(rel) for rel in MONITOR_FILES}
    for package in MONITOR_PACKAGES:
        found |= {p.relative_to(root) for p in (root / package).rglob("*.py")}
    for pattern in MONITOR_GLOBS:
        found |= {p.relative_to(root) for p in root.glob(pattern)}
    missing = sorted(str(rel) for rel in found if not (root / rel).is_file())
    if missing:
        raise ConfigError(f"the drift job's image needs {', '.join(missing)} in {root}")
    return sorted(found)


def content_tag(root: Path, files: list[Path], *, salt: str = "") -> str:
    """``modelyard-monitor:<12 hex>``: a hash of the files' paths and bytes (and ``salt``,
    the base image's id when one replaces the FROM)."""
    digest = hashlib.sha256(salt.encode())
    for rel in files:
        digest.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return f"{MONITOR_NAME}:{digest.hexdigest()[:12]}"


def _image_id(tool: str, backend: Backend, ref: str) -> str | None:
    """The id of ``ref`` in the builder's local storage, or None when it holds no such
    image."""
    if backend == "buildah":
        cmd = [tool, "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]
    else:
        cmd = [tool, "image", "inspect", "--format", "{{.Id}}", ref]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def monitor_image(
    root: Path,
    *,
    backend: Backend = "docker",
    registry: str | None = None,
    base_image: str | None = None,
    tls_verify: bool = True,
) -> Image:
    """Build the drift job's image from ``monitoring/Containerfile`` (unless an image of
    the same content tag is in the builder's storage); push it when ``registry`` is given
    and return it with its manifest digest."""
    tool = builder(backend)
    files = monitor_inputs(root)
    salt = ""
    if base_image:
        salt = _image_id(tool, backend, base_image) or ""
        if not salt:
            raise DeployError(
                f"--base-image {base_image}: no such image in {backend}'s local storage "
                "(build one with `modelyard deploy base-image`)"
            )
    tag = content_tag(root, files, salt=salt)
    ref = image_ref(registry, tag)
    started = time.perf_counter()
    built = _image_id(tool, backend, ref) is None
    if built:
        with tempfile.TemporaryDirectory(prefix="modelyard-monitor-") as tmp:
            context = Path(tmp)
            for rel in files:
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / rel, context / rel)
            containerfile = context / MONITOR_CONTAINERFILE
            cmd = [tool, "build", "-f", str(containerfile), "-t", ref]
            if backend == "buildah":
                cmd.insert(2, "--layers=false")  # one layer: what a RUN removes is not shipped
            if base_image:
                _use_base(tool, backend, base_image, from_line(containerfile, tag))
                cmd.insert(2, "--pull=never" if backend == "buildah" else "--pull=false")
            _run([*cmd, str(context)], f"{backend} build of the drift job's image", tools.env())
    else:
        log.info("%s is built already (same inputs); not building it again", ref)
    seconds = time.perf_counter() - started if built else 0.0
    digest = push(ref, backend=backend, tls_verify=tls_verify) if registry else None
    return Image(tag, ref, digest, seconds, built)


# Version tags: the image built for a registry version (by digest), which `deploy apply`
# and the deploy workflow deploy. A version is *deployed* only once `deploy record` says so.
IMAGE_DIGEST_TAG = DeployTag.IMAGE_DIGEST
IMAGE_REF_TAG = DeployTag.IMAGE


def record(registry: Registry, name: str, version: str, image: Image) -> None:
    """Write the pushed image's digest on the registry version it was built from."""
    registry.set_version_tags(
        name, version, {IMAGE_DIGEST_TAG: image.digest, IMAGE_REF_TAG: image.by_digest}
    )


def recorded(version: Version) -> str:
    """The image ``deploy containerize --push`` recorded on ``version``, by digest."""
    found = version.tags.get(IMAGE_REF_TAG)
    if not found:
        raise RegistryError(
            f"{version.name} v{version.version} has no {IMAGE_REF_TAG} tag: run `modelyard "
            f"deploy containerize {version.name}/{version.version} --push REGISTRY` first"
        )
    return found
