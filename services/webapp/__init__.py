"""The web application: its own service, a client of the model API over HTTP.

Pages: "Try it" (a drawing canvas for image models, a form generated from the feature
schema for tabular ones, CSV batch scoring) and "Model" (the card from ``/v1/metadata``).
Server-rendered with Starlette + Jinja2; the API key stays on the server.

- ``settings.py``  what it reads from the environment (the one place)
- ``inputs.py``    pure: drawing -> the model's input, form fields, CSV in and out
- ``guard.py``     CSRF tokens, the per-client rate limit, security headers
- ``app.py``       the Starlette app: routes, pages, error pages
- ``service.py``   the BentoML service that ships it (its own Bento: ``bentofile.yaml``)
- ``build.py``     ``bentoml build`` of that Bento (build environment only)

It imports only ``services.client`` from this project, never the model service or core.
"""
