"""Serving and shipping: build (the Bento), serve, and the `deploy` group (image,
Kubernetes rollout, record) that .github/workflows/deploy.yml runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core import settings
from core.tagkeys import LineageTag
from modelyard.apikeys import DEFAULT_FILE as DEFAULT_KEY_FILE
from modelyard.common import (
    EXIT_CODES,
    ParamsOpt,
    console,
    err_console,
    github_output,
    guard,
    load,
)
from modelyard.common import registry as open_registry

if TYPE_CHECKING:
    from pipelines.config import Register
    from registry.client import Registry

app = typer.Typer()
deploy_app = typer.Typer(
    help="Ship a built Bento: container image + push, Kubernetes rollout, and the record "
    "of what runs (the steps of .github/workflows/deploy.yml).",
    no_args_is_help=True,
)
PARAMS = Path("params.yaml")

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="NAME@ALIAS or NAME/VERSION. Default: <register.model_name>@champion, "
        "or @challenger while there is no champion.",
    ),
]

ShadowOpt = Annotated[
    str | None,
    typer.Option(
        "--shadow",
        help="Also score every request with this version (NAME@ALIAS or NAME/VERSION, e.g. "
        "digits-classifier@challenger), off the response path: its answers go to the "
        "inference log beside the champion's, never to clients. MODELYARD_SHADOW=off "
        "serves such a Bento without it.",
    ),
]


def _build(params_file: Path, ref: str | None, shadow: str | None = None) -> Any:
    from services import build as bento_build

    params, _ = guard("build", lambda: load(params_file))
    registry = open_registry(params_file)
    if ref is None:
        ref = guard("build", lambda: default_ref(registry, params.register_))
    return guard("build", lambda: bento_build.build(ref, registry, shadow=shadow))


def default_ref(registry: Registry, register: Register) -> str:
    """What to build and serve when no --model is named. Team mode (the champion lives on
    another model than the candidates, register.champion_model): only that model's
    ``champion``, which only the review gate moves; never an alias on the candidates
    model, which the trainer can set. Otherwise NAME@champion, or NAME@challenger while
    there is no champion."""
    from core.errors import RegistryError

    production, candidates = register.champion_model, register.model_name
    if production != candidates:
        if registry.by_alias(production, "champion") is None:
            raise RegistryError(
                f"team mode: {production} has no @champion yet, and nothing else is served by "
                f"default (an alias on {candidates} is the trainer's to set): approve a "
                "version (`modelyard approve`), or name one with --model"
            )
        return f"{production}@champion"
    ref, fallback = registry.default_ref(candidates)
    if fallback:
        err_console.print(f"[yellow]no @champion yet (see promotion); using {ref}[/]")
    return ref


def _shadowing(built: Any) -> str:
    return f", shadow {built.shadow}" if built.shadow else ""


@app.command(epilog=EXIT_CODES)
def build(
    params_file: ParamsOpt = PARAMS, model: ModelOpt = None, shadow: ShadowOpt = None
) -> None:
    """Build a Bento (BentoML) from an exact registry version, checking its sha256.

    The Bento's tag and labels name the model version; its Dockerfile is what the deploy
    workflow containerizes. With --shadow the Bento also carries that version (checked
    the same way, labels shadow_*), which the service scores off the response path. Set
    BENTOML_HOME to choose the BentoML store. In GitHub Actions ($GITHUB_OUTPUT set) it
    also writes the step outputs bento_tag, model_name and model_version.
    """
    built = _build(params_file, model, shadow)
    verb = "built" if built.created else "up to date:"
    console.print(
        f"build: {verb} Bento {built.bento_tag} ({built.name} v{built.version}, "
        f"model {built.model_tag}{_shadowing(built)})"
    )
    github_output(bento_tag=built.bento_tag, model_name=built.name, model_version=built.version)


@app.command(epilog=EXIT_CODES)
def serve(
    params_file: ParamsOpt = PARAMS,
    model: ModelOpt = None,
    port: Annotated[int, typer.Option(help="Port on --host.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    shadow: ShadowOpt = None,
) -> None:
    """Build the Bento if needed and serve it (ONNX Runtime) with `bentoml serve`.

    With --shadow NAME@challenger the challenger scores the same requests after the
    champion has answered (a bounded queue: dropped and counted when full, never waited
    for); each row's two answers go to the inference log as a "shadow" record, which
    `monitor run` compares. Clients see only the champion.

    API keys come from MODELYARD_API_KEYS (comma-separated; unset: no auth; set but
    empty: the service refuses to start) and the named keys of `modelyard keys` in
    MODELYARD_API_KEY_FILE (default .modelyard/api-keys.json when it exists; re-read when
    it changes); the inference log goes to MODELYARD_LOG_DIR
    (default .modelyard/inference-log). If the service refuses to start (a model file
    that does not match the registry's sha256, an empty MODELYARD_API_KEYS), the command
    stops it and exits 1 at once with the reason. Otherwise it runs until stopped and
    exits with `bentoml serve`'s code.
    """
    from core import tools
    from services import serve as bento_serve

    _, root = guard("serve", lambda: load(params_file))
    built = _build(params_file, model, shadow)
    current = settings.current()
    log_dir = current.log_dir or root / ".modelyard" / "inference-log"
    variables = {"MODELYARD_LOG_DIR": str(log_dir)}
    key_file = current.api_key_file or root / DEFAULT_KEY_FILE
    if current.api_key_file or key_file.exists():
        # Absolute: the workers' working folder is not ours.
        variables["MODELYARD_API_KEY_FILE"] = str(key_file.resolve())
    env = tools.env(variables)
    keys = f"; keys: {key_file}" if "MODELYARD_API_KEY_FILE" in variables else ""
    console.print(
        f"serving {built.name} v{built.version}{_shadowing(built)} on http://{host}:{port}  "
        f"(POST /v1/predict, GET /v1/metadata, /docs.json, /readyz, /metrics); log: {log_dir}"
        f"{keys}"
    )
    code = guard("serve", lambda: bento_serve.run(built.bento_tag, host=host, port=port, env=env))
    raise typer.Exit(code)


@deploy_app.command("base-image", epilog=EXIT_CODES)
def deploy_base_image(
    tag: Annotated[str, typer.Option(help="The tag in buildah's local storage.")] = (
        "localhost/modelyard-base:bookworm-py3.11"
    ),
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the Debian root filesystem is kept between builds "
            "[default: ~/.cache/modelyard]."
        ),
    ] = None,
) -> None:
    """Build a python:3.11-slim stand-in from Debian packages (mmdebstrap + buildah).

    For machines that cannot pull from Docker Hub: pass it to `deploy containerize
    --base-image`. The root filesystem is cached in --cache-dir (later builds take
    seconds). Needs root, mmdebstrap and buildah (`make system-tools`).
    """
    from services import image

    base = guard("base-image", lambda: image.base_image(tag, cache_dir=cache_dir))
    reused = "cached" if base.reused_rootfs else "new"
    console.print(f"base-image: {base.tag} (root filesystem {reused}: {base.rootfs})")


PushOpt = Annotated[
    str | None,
    typer.Option(help="Push to this registry path (e.g. ghcr.io/OWNER/REPO)."),
]
BackendOpt = Annotated[
    str, typer.Option(help="The image builder: docker (needs an engine) or buildah.")
]
BaseImageOpt = Annotated[
    str | None,
    typer.Option(
        help="Build FROM this local image instead of python:3.11-slim (see `deploy base-image`)."
    ),
]
TlsVerifyOpt = Annotated[bool, typer.Option(help="Require HTTPS to the registry (buildah only).")]


def containerize_bento(
    command: str,
    bento_tag: str,
    *,
    push: str | None,
    backend: str,
    base_image: str | None,
    tls_verify: bool,
) -> Any:
    """`bentoml containerize` one Bento with the image options (the API's, the web app's)."""
    from services import image

    return guard(
        command,
        lambda: image.containerize(
            bento_tag,
            backend=backend,  # type: ignore[arg-type]  # checked by containerize
            registry=push,
            base_image=base_image,
            tls_verify=tls_verify,
        ),
    )


@deploy_app.command("containerize", epilog=EXIT_CODES)
def deploy_containerize(
    model: Annotated[str, typer.Argument(help="NAME/VERSION or NAME@ALIAS in the registry.")],
    push: Annotated[
        str | None,
        typer.Option(
            help="Push to this registry path (e.g. ghcr.io/OWNER/REPO) and record the "
            "image's digest on the version."
        ),
    ] = None,
    backend: BackendOpt = "docker",
    base_image: BaseImageOpt = None,
    tls_verify: TlsVerifyOpt = True,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Build the version's Bento, then its OCI image with `bentoml containerize`.

    The image is REGISTRY/<model>:<bento version>. With --push it is pushed, and its
    digest is recorded on the registry version (tags deployed.image_digest and
    deployed.image = REGISTRY/<model>@sha256:...), which is what Kubernetes deploys. In
    GitHub Actions the step outputs are image (by digest), digest and bento_tag.
    """
    from services import image

    guard("containerize", lambda: image.check_target(backend=backend, registry=push))
    built = _build(params_file, model)
    made = containerize_bento(
        "containerize",
        built.bento_tag,
        push=push,
        backend=backend,
        base_image=base_image,
        tls_verify=tls_verify,
    )
    if made.digest is None:
        console.print(f"containerize: {made.ref} (built in {made.seconds:.0f} s, not pushed)")
        github_output(image=made.ref, bento_tag=built.bento_tag)
        return
    registry = open_registry(params_file)
    guard("containerize", lambda: image.record(registry, built.name, built.version, made))
    console.print(
        f"containerize: {made.by_digest} (built in {made.seconds:.0f} s, pushed; "
        f"recorded on {built.name} v{built.version})"
    )
    github_output(image=made.by_digest, digest=made.digest, bento_tag=built.bento_tag)


def print_image(command: str, made: Any) -> None:
    """Say what was built (or reused) and pushed; the step outputs image (by digest when
    pushed), digest and tag."""
    how = f"built in {made.seconds:.0f} s" if made.built else "unchanged, not rebuilt"
    if made.digest is None:
        console.print(f"{command}: {made.ref} ({how}, not pushed)")
        github_output(image=made.ref, tag=made.tag)
        return
    console.print(f"{command}: {made.by_digest} ({how}, pushed)")
    github_output(image=made.by_digest, digest=made.digest, tag=made.tag)


@deploy_app.command("monitor-image", epilog=EXIT_CODES)
def deploy_monitor_image(
    push: PushOpt = None,
    backend: BackendOpt = "docker",
    base_image: BaseImageOpt = None,
    tls_verify: TlsVerifyOpt = True,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Build the drift CronJob's image (monitoring/Containerfile) from this project.

    It holds the project's packages, params.yaml and the GX suites, and only the job's
    pinned packages (monitoring/requirements.txt: no torch, dvc or bentoml); ENTRYPOINT
    modelyard, WORKDIR /app, uid 1034. Tagged REGISTRY/modelyard-monitor:<hash of those
    inputs>: when that image is in the builder's storage already it is not rebuilt. With
    --push it is pushed; in GitHub Actions the step outputs are image (by digest), digest
    and tag. `deploy apply --monitor-image IMAGE` deploys it.
    """
    from services import image

    _, root = guard("monitor-image", lambda: load(params_file))
    made = guard(
        "monitor-image",
        lambda: image.monitor_image(
            root,
            backend=backend,  # type: ignore[arg-type]  # checked by monitor_image
            registry=push,
            base_image=base_image,
            tls_verify=tls_verify,
        ),
    )
    print_image("monitor-image", made)


EnvOpt = Annotated[
    str, typer.Option("--env", help="staging or production (services/k8s/overlays).")
]
ReleaseModel = Annotated[
    str, typer.Argument(help="NAME/VERSION (or NAME@ALIAS) of the registered model to deploy.")
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        help="The API's image, REGISTRY/NAME@sha256:... Default: the one `deploy "
        "containerize --push` recorded on the version (tag deployed.image)."
    ),
]
WebappImageOpt = Annotated[
    str | None,
    typer.Option(help="Also deploy the web application, from this image (by digest)."),
]
MonitorImageOpt = Annotated[
    str | None,
    typer.Option(help="Also deploy the drift CronJob, from this image (by digest)."),
]
TimeoutOpt = Annotated[int, typer.Option(help="Seconds to wait for each rollout.")]
ApplyTimeoutOpt = Annotated[
    int | None,
    typer.Option(
        help="Seconds to wait for each rollout. Default: from the manifests (the most pods "
        "the autoscaler allows, maxSurge at a time, each its probes' whole budget)."
    ),
]
HostOpt = Annotated[
    str | None,
    typer.Option(help="The environment's Ingress host (default: $MODELYARD_HOST). apply needs it."),
]
IssuerOpt = Annotated[
    str | None,
    typer.Option(
        help="cert-manager ClusterIssuer (default: $MODELYARD_TLS_ISSUER, else letsencrypt)."
    ),
]
StorageClassOpt = Annotated[
    str | None,
    typer.Option(
        help="The inference log's storage class, ReadWriteMany (default: "
        "$MODELYARD_STORAGE_CLASS, else the cluster's default): efs-sc (EKS), "
        "standard-rwx (GKE Filestore), azurefile-csi (AKS), an NFS class elsewhere."
    ),
]


def _release(
    params_file: Path,
    env: str,
    model: str,
    image: str | None,
    webapp_image: str | None,
    monitor_image: str | None,
    host: str | None = None,
    issuer: str | None = None,
    storage_class: str | None = None,
) -> Any:
    from services import build, deploy
    from services import image as images

    site = settings.current()

    match = build.REF.match(model)
    if image is None or not match or not match["version"]:
        registry = open_registry(params_file)
        version = guard("deploy", lambda: build.resolve(registry, model))
        name, number = version.name, version.version
        if image is None:
            image = guard("deploy", lambda: images.recorded(version))
    else:
        name, number = match["name"], match["version"]
    return guard(
        "deploy",
        lambda: deploy.Release(
            env,
            image,
            name,
            number,
            webapp_image,
            monitor_image,
            host=host or site.deploy_host,
            issuer=issuer or site.tls_issuer,
            storage_class=storage_class or site.storage_class,
        ),
    )


def _secrets() -> Any:
    from services import deploy

    current = settings.current()
    secret, id_key, file = current.webapp_secret, current.id_key, current.api_key_file
    try:
        named = file.read_text() if file else None
    except OSError as exc:
        err_console.print(f"[bold red]deploy failed:[/] MODELYARD_API_KEY_FILE: {exc}")
        raise typer.Exit(2) from None
    return deploy.Secrets(
        current.api_keys or "",
        secret.get_secret_value() if secret else None,
        id_key.get_secret_value() if id_key else None,
        named,
    )


@deploy_app.command("render", epilog=EXIT_CODES)
def deploy_render(
    model: ReleaseModel,
    env: EnvOpt = "staging",
    image: ImageOpt = None,
    webapp_image: WebappImageOpt = None,
    monitor_image: MonitorImageOpt = None,
    host: HostOpt = None,
    issuer: IssuerOpt = None,
    storage_class: StorageClassOpt = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Print the manifests `deploy apply` would apply (kubectl kustomize), Secret included.

    Keys come from MODELYARD_API_KEYS (and MODELYARD_WEBAPP_SECRET with --webapp-image);
    with MODELYARD_API_KEY_FILE, its named keys become a Secret mounted into the API.
    """
    from services import deploy

    release = _release(
        params_file, env, model, image, webapp_image, monitor_image, host, issuer, storage_class
    )
    typer.echo(guard("deploy render", lambda: deploy.render(release, _secrets())), nl=False)


@deploy_app.command("apply", epilog=EXIT_CODES)
def deploy_apply(
    model: ReleaseModel,
    env: EnvOpt = "staging",
    image: ImageOpt = None,
    webapp_image: WebappImageOpt = None,
    monitor_image: MonitorImageOpt = None,
    host: HostOpt = None,
    issuer: IssuerOpt = None,
    storage_class: StorageClassOpt = None,
    timeout: ApplyTimeoutOpt = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Apply the release to the environment's namespace and wait for the rollout.

    The API-keys Secret is made from MODELYARD_API_KEYS (the deploy workflow passes the
    repository secret), and with MODELYARD_API_KEY_FILE a second one from the named keys
    of `modelyard keys`, mounted into the API's pods. Cluster credentials: $KUBE_CONFIG (a kubeconfig's content, as the
    workflow's secret), else kubectl's own configuration. Before applying, each
    Deployment's revision is written to .modelyard/deploy/ENV.before.json; on a failed
    rollout nothing is undone here: the workflow runs `deploy undo`, which reads it.
    """
    from services import deploy

    deploy.before_file(env).unlink(missing_ok=True)  # a stopped apply leaves no stale record
    release = _release(
        params_file, env, model, image, webapp_image, monitor_image, host, issuer, storage_class
    )
    guard(
        "deploy apply",
        lambda: deploy.apply(release, _secrets(), timeout_s=timeout, kubeconfig=_kubeconfig()),
    )
    console.print(
        f"deploy apply: {release.namespace}/{deploy.API} runs {release.model} "
        f"v{release.version} ({release.image})"
    )


@deploy_app.command("undo", epilog=EXIT_CODES)
def deploy_undo(env: EnvOpt = "staging", timeout: TimeoutOpt = 300) -> None:
    """Take back what the last `deploy apply` to ENV changed, and only that.

    A Deployment whose revision the apply moved goes back to the revision it had (the
    API, the web app); one the apply left unchanged is kept; one the apply created (a
    first deploy) is scaled to 0 replicas. No record of an apply (it stopped before the
    cluster): nothing to do, exit 0.
    """
    from services import deploy

    steps = guard(
        "deploy undo",
        lambda: deploy.undo(env, timeout_s=timeout, kubeconfig=_kubeconfig()),
    )
    if not steps:
        console.print(
            f"deploy undo: no apply to {env} was recorded ({deploy.before_file(env)}): "
            "it stopped before the cluster, nothing to undo"
        )
    for step in steps:
        console.print(f"deploy undo: {deploy.namespace(env)}/{step.deployment}: {step.why}")


def _kubeconfig() -> str | None:
    secret = settings.current().kube_config
    return secret.get_secret_value() if secret else None


@deploy_app.command("record", epilog=EXIT_CODES)
def deploy_record(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version now deployed.")],
    image: Annotated[str, typer.Option(help="The image that runs it.")],
    target: Annotated[
        str, typer.Option(help="The environment it runs in: staging or production.")
    ] = "production",
    actor: Annotated[
        str | None, typer.Option(help="Who deployed (audit). Default: $GITHUB_ACTOR or $USER.")
    ] = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Record the deployed version on the registered model (the reconciler reads it).

    Only a rollout that passed its smoke test is recorded: an image that was built and
    pushed but runs nowhere is not deployed (exit 2 for any other --target).
    """
    from registry import promotion
    from services import deploy

    if target not in deploy.ENVIRONMENTS:
        err_console.print(
            f"deploy record failed: --target {target!r}: expected one of "
            f"{', '.join(deploy.ENVIRONMENTS)}; an image that runs nowhere is not deployed",
            highlight=False,
        )
        raise typer.Exit(2)
    registry = open_registry(params_file)
    who = settings.current().actor(actor)
    guard(
        "deploy record",
        lambda: promotion.record_deployment(registry, name, version, image, target, who),
    )
    console.print(f"deploy record: {name} v{version} runs {image} on {target}")


@deploy_app.command("commit", epilog=EXIT_CODES)
def deploy_commit(
    model: ReleaseModel,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Print the git commit the version was trained and validated with (its `git.commit`
    tag; step output `commit`), so deploy.yml builds the images from that commit, not
    from whatever the default branch holds at deploy time. Exit 1 when the version has
    none, or was trained from uncommitted changes (`git.dirty`): no commit holds what
    trained it.
    """
    from core.errors import RegistryError
    from services import build

    registry = open_registry(params_file)
    version = guard("deploy commit", lambda: build.resolve(registry, model))
    commit = version.tags.get(LineageTag.GIT_COMMIT, "")
    dirty = version.tags.get(LineageTag.GIT_DIRTY, "").lower() == "true"

    def check() -> str:
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise RegistryError(
                f"{version.name} v{version.version} records no git commit ({commit or 'none'}): "
                "register it from a git checkout (`modelyard run` in CI does)"
            )
        if dirty:
            raise RegistryError(
                f"{version.name} v{version.version} was trained from uncommitted changes on "
                f"top of {commit[:12]}: no commit holds what trained it; train it again from "
                "a clean checkout (train.yml does) and promote that version"
            )
        return commit

    found = guard("deploy commit", check)
    github_output(commit=found)
    console.print(found, highlight=False)


@deploy_app.command("smoke", epilog=EXIT_CODES)
def deploy_smoke(
    url: Annotated[str, typer.Argument(help="The live service, e.g. https://models.example.com.")],
    model: Annotated[str, typer.Option(help="NAME/VERSION it must serve.")],
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to keep asking while the endpoint is unreachable, not routed yet "
            "(404/502/503/504) or still serves another version."
        ),
    ] = 180.0,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Smoke-test a live endpoint: /v1/metadata names MODEL (asked again, with backoff, for
    up to --wait seconds while the Ingress, its certificate or the rollout catch up; a
    401/403 fails at once), and one probe row gets the label the registered artifact
    itself gives it.

    The API key is the first of MODELYARD_API_KEYS. Exit 1 when a check fails (the
    deploy workflow then rolls back with `deploy undo`).
    """
    from services import build, smoke

    match = build.REF.match(model)
    if not match or not match["version"]:
        err_console.print(f"deploy smoke failed: --model {model!r}: expected NAME/VERSION")
        raise typer.Exit(2)
    name, version = match["name"], match["version"]
    registry = open_registry(params_file)
    expected = guard("deploy smoke", lambda: smoke.probe(registry, name, version))
    passed = guard(
        "deploy smoke",
        lambda: smoke.check(
            url,
            name=name,
            version=version,
            api_key=settings.current().first_api_key,
            expected=expected,
            wait_s=wait,
        ),
    )
    console.print(f"deploy smoke: {passed.url} serves {passed.model}; probe -> {passed.label!r}")


@deploy_app.command("record-failure", epilog=EXIT_CODES)
def deploy_record_failure(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version whose rollout failed.")],
    env: EnvOpt = "production",
    reason: Annotated[str, typer.Option(help="What failed (the step).")] = "rollout failed",
    actor: Annotated[
        str | None, typer.Option(help="Who deployed (audit). Default: $GITHUB_ACTOR or $USER.")
    ] = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Write a failed rollout on the version (tags deploy.failed.*) and in the audit log."""
    from services import deploy

    registry = open_registry(params_file)
    who = settings.current().actor(actor)
    guard(
        "deploy record-failure",
        lambda: deploy.record_failure(registry, name, version, env=env, reason=reason, by=who),
    )
    console.print(f"deploy record-failure: {name} v{version} failed on {env}: {reason}")
