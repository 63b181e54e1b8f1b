"""Serving and shipping: build (the Bento), serve, and the `deploy` group (image,
Kubernetes rollout, record) that .github/workflows/deploy.yml runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from core import settings
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


def _build(params_file: Path, ref: str | None) -> Any:
    from services import build as bento_build

    params, _ = guard("build", lambda: load(params_file))
    registry = open_registry(params_file)
    if ref is None:
        ref, fallback = guard("build", lambda: registry.default_ref(params.register_.model_name))
        if fallback:
            err_console.print(f"[yellow]no @champion yet (see promotion); using {ref}[/]")
    return guard("build", lambda: bento_build.build(ref, registry))


@app.command(epilog=EXIT_CODES)
def build(params_file: ParamsOpt = PARAMS, model: ModelOpt = None) -> None:
    """Build a Bento (BentoML) from an exact registry version, checking its sha256.

    The Bento's tag and labels name the model version; its Dockerfile is what the deploy
    workflow containerizes. Set BENTOML_HOME to choose the BentoML store. In GitHub
    Actions ($GITHUB_OUTPUT set) it also writes the step outputs bento_tag,
    model_name and model_version.
    """
    built = _build(params_file, model)
    verb = "built" if built.created else "up to date:"
    console.print(
        f"build: {verb} Bento {built.bento_tag} ({built.name} v{built.version}, "
        f"model {built.model_tag})"
    )
    github_output(bento_tag=built.bento_tag, model_name=built.name, model_version=built.version)


@app.command(epilog=EXIT_CODES)
def serve(
    params_file: ParamsOpt = PARAMS,
    model: ModelOpt = None,
    port: Annotated[int, typer.Option(help="Port on --host.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Build the Bento if needed and serve it (ONNX Runtime) with `bentoml serve`.

    API keys come from MODELYARD_API_KEYS (comma-separated; unset: no auth; set but
    empty: the service refuses to start); the inference log goes to MODELYARD_LOG_DIR
    (default .modelyard/inference-log). If the service refuses to start (a model file
    that does not match the registry's sha256, an empty MODELYARD_API_KEYS), the command
    stops it and exits 1 at once with the reason. Otherwise it runs until stopped and
    exits with `bentoml serve`'s code.
    """
    from core import tools
    from services import serve as bento_serve

    _, root = guard("serve", lambda: load(params_file))
    built = _build(params_file, model)
    log_dir = settings.current().log_dir or root / ".modelyard" / "inference-log"
    env = tools.env({"MODELYARD_LOG_DIR": str(log_dir)})
    console.print(
        f"serving {built.name} v{built.version} on http://{host}:{port}  (POST /v1/predict, "
        f"GET /v1/metadata, /docs.json, /readyz, /metrics); log: {log_dir}"
    )
    code = guard("serve", lambda: bento_serve.run(built.bento_tag, host=host, port=port, env=env))
    raise typer.Exit(code)


@deploy_app.command("containerize", epilog=EXIT_CODES)
def deploy_containerize(
    bento: Annotated[
        str, typer.Option(help="Bento tag NAME:VERSION (as `modelyard build` prints).")
    ],
    repository: Annotated[
        str, typer.Option(help="Image repository, e.g. ghcr.io/OWNER/REPO (lower-cased).")
    ],
    push: Annotated[bool, typer.Option(help="docker push the image after building it.")] = True,
) -> None:
    """`bentoml containerize` the Bento and push the image (needs a Docker engine).

    The image is REPOSITORY/<bento name>:<bento version>; in GitHub Actions it is also
    written to the step output `image`.
    """
    from services import deploy

    image = guard("containerize", lambda: deploy.containerize(bento, repository, push))
    console.print(f"containerize: {image.ref}{' (pushed)' if push else ''}")
    github_output(image=image.ref)


@deploy_app.command("apply", epilog=EXIT_CODES)
def deploy_apply(
    image: Annotated[str, typer.Option(help="The pushed image, REGISTRY/NAME:TAG.")],
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace.")] = None,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for the rollout.")] = 300,
) -> None:
    """`kubectl apply -k` services/k8s with IMAGE, then wait for the rollout.

    Cluster credentials: $KUBE_CONFIG (a kubeconfig's content, as the workflow's secret),
    else kubectl's own configuration ($KUBECONFIG, ~/.kube/config).
    """
    from services import deploy

    secret = settings.current().kube_config
    kubeconfig = secret.get_secret_value() if secret else None
    guard("deploy apply", lambda: deploy.apply(image, namespace, timeout, kubeconfig))
    console.print(f"deploy apply: deployment/{deploy.DEPLOYMENT} runs {image}")


@deploy_app.command("record", epilog=EXIT_CODES)
def deploy_record(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version now deployed.")],
    image: Annotated[str, typer.Option(help="The image that runs it.")],
    target: Annotated[
        str, typer.Option(help="Where it runs (cluster/namespace, or 'image-only').")
    ] = "production",
    actor: Annotated[
        str | None, typer.Option(help="Who deployed (audit). Default: $GITHUB_ACTOR or $USER.")
    ] = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Record the deployed version on the registered model (the reconciler reads it)."""
    from registry import promotion

    registry = open_registry(params_file)
    who = settings.current().actor(actor)
    guard(
        "deploy record",
        lambda: promotion.record_deployment(registry, name, version, image, target, who),
    )
    console.print(f"deploy record: {name} v{version} runs {image} on {target}")
