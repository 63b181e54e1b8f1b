"""The `webapp` command: serve the web application (its own BentoML service), or build
its Bento."""

from __future__ import annotations

from typing import Annotated

import typer

from core import processes
from modelyard.common import EXIT_CODES, console, err_console, github_output, guard
from modelyard.serving import BackendOpt, BaseImageOpt, PushOpt, TlsVerifyOpt

app = typer.Typer()
webapp_app = typer.Typer(
    help="The web application: `modelyard webapp --api URL --port P` serves it; "
    "`modelyard webapp build` builds its Bento, `modelyard webapp containerize` its image.",
    invoke_without_command=True,
)

WEBAPP_CODES = (
    EXIT_CODES + " Serving returns the exit code of `bentoml serve` when it stops; 2 also "
    "when --api (or MODELYARD_API_URL) is missing or not an http(s) URL; 130 stopped by "
    "Ctrl-C; 143 stopped by SIGTERM (the server and its workers are stopped first)."
)


@webapp_app.callback(epilog=WEBAPP_CODES)
def webapp(
    ctx: typer.Context,
    api: Annotated[
        str | None,
        typer.Option(
            help="The model API's base URL, e.g. http://127.0.0.1:3000. Default: $MODELYARD_API_URL.",
            envvar="MODELYARD_API_URL",
            show_envvar=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on --host.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Serve the web application: Try it (draw or fill in, CSV scoring) and the model card.

    It is a client of the model API over HTTP, run as `bentoml serve` of
    services.webapp.service:WebApp, exactly what its Bento runs. The API key comes from
    MODELYARD_API_KEY and never reaches the browser; MODELYARD_WEBAPP_SECRET signs its
    forms (set it when running several replicas). Other settings:
    services/webapp/settings.py.
    """
    if ctx.invoked_subcommand is not None:
        return
    from core import tools
    from services.webapp import build as webapp_build

    if not api or not api.startswith(("http://", "https://")):
        err_console.print(
            f"[bold red]webapp:[/] --api must be the model API's base URL (http://HOST:PORT), got {api!r}"
        )
        raise typer.Exit(2)
    bentoml_bin = guard("webapp", lambda: tools.binary("bentoml"))
    root = webapp_build.code_root()
    env = tools.env({"MODELYARD_API_URL": api})
    console.print(f"web app on http://{host}:{port}  (model API: {api})")
    cmd = [
        bentoml_bin,
        "serve",
        "services.webapp.service:WebApp",
        "--working-dir",
        str(root),
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise typer.Exit(processes.run_foreground(cmd, env=env, cwd=root))


@webapp_app.command("build", epilog=EXIT_CODES)
def build() -> None:
    """Build the web app's Bento (services/webapp/bentofile.yaml), versioned by a hash of
    its files; nothing is rebuilt when it exists. Set BENTOML_HOME to choose the store. In
    GitHub Actions it also writes the step output bento_tag."""
    from services.webapp import build as webapp_build

    built = guard("webapp build", webapp_build.build)
    console.print(
        f"webapp build: {'built' if built.created else 'up to date:'} Bento {built.bento_tag}"
    )
    github_output(bento_tag=built.bento_tag)


@webapp_app.command("containerize", epilog=EXIT_CODES)
def containerize(
    push: PushOpt = None,
    backend: BackendOpt = "docker",
    base_image: BaseImageOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """Build the web app's Bento (as `webapp build`), then its OCI image with `bentoml
    containerize`, as `deploy containerize` does for the model API.

    The image is REGISTRY/modelyard-webapp:<Bento version>; it runs `bentoml serve` of the
    Bento on port 3000 (what services/k8s/components/webapp/deployment.yaml expects). With
    --push it is pushed; in GitHub Actions the step outputs are image (by digest), digest
    and tag. `deploy apply --webapp-image IMAGE` deploys it.
    """
    from modelyard.serving import containerize_bento, print_image
    from services import image
    from services.webapp import build as webapp_build

    guard("webapp containerize", lambda: image.builder(backend))  # before the Bento build
    built = guard("webapp containerize", webapp_build.build)
    made = containerize_bento(
        "webapp containerize",
        built.bento_tag,
        push=push,
        backend=backend,
        base_image=base_image,
        tls_verify=tls_verify,
    )
    print_image("webapp containerize", made)
