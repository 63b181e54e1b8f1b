"""The web app as a BentoML service, so it ships and deploys like the model service: its
own Bento (``services/webapp/bentofile.yaml``), image and Deployment.

It holds no model: the Starlette app (``app.py``) is mounted at ``/`` and reads its
settings (``MODELYARD_API_URL``, ``MODELYARD_API_KEY``, ...) from the environment when it
starts. BentoML adds ``/livez`` and ``/readyz``; ``/metrics`` is the app's own; the web app stays ready while
the model API is down (its pages say so), so a slow API never takes the pages away.
"""

from __future__ import annotations

import bentoml

from services.webapp.app import create_app


@bentoml.service(
    name="modelyard-webapp",
    traffic={"timeout": 60},
    # BentoML labels its request metrics by raw path (unbounded); the app counts by route.
    metrics={"enabled": False},
    logging={"access": {"skip_paths": ["/livez", "/readyz", "/metrics", "/static"]}},
)
@bentoml.asgi_app(create_app(), path="/")
class WebApp:
    """Serves the pages; every prediction goes to the model API over HTTP."""
