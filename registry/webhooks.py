"""MLflow webhooks: the receiver that enforces the review gate on alias moves.

MLflow OSS lets anyone with edit rights move an alias. `modelyard registry listen` runs
this receiver; MLflow (3.x, SQL store) posts `model_version_alias.created` to it, signed
with HMAC-SHA256 over ``"{delivery_id}.{timestamp}.{body}"``.

- A bad or missing signature, a timestamp outside the replay window, or a delivery id
  seen before: 401, nothing happens.
- A valid delivery is acknowledged at once (200) and handled on a worker thread:
  ``champion`` moved onto a version the gate approves -> record it and trigger the
  deploy (``registry.dispatch``); onto one it refuses -> move ``champion`` back to the
  previous champion (or remove it), tag the version ``promotion.refused``, audit it.
- A delivery that no longer matches the registry (``champion`` has moved on since; MLflow
  retries late deliveries) is ignored as stale.
- A registry that cannot be read (auth, 5xx, network) is an error, logged as one, never
  "stale"; ``modelyard registry reconcile`` catches up once the registry answers again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core import http
from core.errors import ExternalServiceError, PromotionRefused, RegistryError
from registry import policy, promotion
from registry.auth import BadCredentials
from registry.client import CHAMPION, Registry
from registry.dispatch import Dispatcher

log = logging.getLogger(__name__)

EVENTS: list[Any] = [
    "model_version_alias.created",
    "model_version_alias.deleted",
    "model_version_tag.set",
    "model_version_tag.deleted",
]
REPLAY_WINDOW_S = 300
DEPLOY_REQUESTED = promotion.DEPLOY_REQUESTED
DEPLOYED = promotion.DEPLOYED


class Rejected(Exception):
    pass


class Seen:
    """Delivery ids seen, in memory (one person's listener). Team mode keeps them in the
    gate's database instead (``GateStore.remember_delivery``): a restart forgets nothing."""

    def __init__(self, remember: int = 10_000) -> None:
        self.remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, delivery: str) -> bool:
        """Record ``delivery``; False if it was seen before."""
        with self._lock:
            if delivery in self._seen:
                return False
            self._seen[delivery] = None
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        return True


class Verifier:
    """Checks signature, timestamp window and delivery-id reuse."""

    def __init__(
        self,
        secret: str,
        window_s: int = REPLAY_WINDOW_S,
        *,
        remember: Callable[[str], bool] | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        self.secret = secret.encode()
        self.window_s = window_s
        self.remember = remember or Seen()

    def verify(
        self, headers: Mapping[str, str] | Any, body: bytes, now: float | None = None
    ) -> None:
        delivery = headers.get("X-MLflow-Delivery-Id") or ""
        stamp = headers.get("X-MLflow-Timestamp") or ""
        signature = headers.get("X-MLflow-Signature") or ""
        if not (delivery and stamp and signature):
            raise Rejected("missing signature headers")
        if not stamp.isdigit() or abs((now or time.time()) - int(stamp)) > self.window_s:
            raise Rejected("timestamp outside the replay window")
        expected = sign(self.secret, delivery, stamp, body)
        if not hmac.compare_digest(expected, signature.encode()):
            raise Rejected("invalid signature")
        if not self.remember(delivery):
            raise Rejected("delivery already processed (replay)")


def sign(secret: bytes, delivery: str, stamp: str, body: bytes) -> bytes:
    digest = hmac.new(secret, f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return b"v1," + base64.b64encode(digest)


def handle(event: dict[str, Any], registry: Registry, dispatcher: Dispatcher) -> str:
    """Act on one verified delivery; return what was done (for logs and tests)."""
    data = event.get("data") or {}
    if (event.get("entity"), event.get("action")) != ("model_version_alias", "created"):
        return "ignored"
    if data.get("alias") != CHAMPION:
        return "ignored"
    name, version = str(data["name"]), str(data["version"])
    # Act on the registry as it is now, not on the event: MLflow retries deliveries, so a
    # late one can describe a move that a later promotion, revert or rollback undid.
    current = registry.by_alias(name, CHAMPION)
    if current is None or current.version != version:
        return "stale"
    tags = current.tags
    decision = policy.decide(tags)
    if not decision.ok:
        previous = _previous_champion(registry, name, version)
        if previous:
            registry.set_champion(name, previous)
        else:
            registry.clear_champion(name)
        registry.set_version_tags(name, version, {promotion.REFUSED: "; ".join(decision.reasons)})
        promotion.audit(
            registry,
            name,
            "alias-reverted",
            version=version,
            restored=previous,
            reasons=decision.reasons,
        )
        log.warning("reverted @champion on %s v%s: %s", name, version, decision)
        return f"reverted:{previous or 'none'}"
    if promotion.REFUSED in tags:  # an earlier refusal no longer applies
        registry.delete_version_tag(name, version, promotion.REFUSED)
    if promotion.PROMOTED_AT not in tags:  # moved in the UI after an approval there
        registry.set_version_tags(
            name,
            version,
            {
                promotion.PROMOTED_AT: promotion._now(),
                promotion.PROMOTED_BY: tags[policy.APPROVAL_REVIEWER],
            },
        )
        promotion.audit(
            registry,
            name,
            "promote",
            version=version,
            by=tags[policy.APPROVAL_REVIEWER],
            via="mlflow-ui",
        )
    if registry.model_tags(name).get(DEPLOYED) == version:
        return "already-deployed"
    how = dispatcher.deploy(name, version)
    registry.set_model_tag(name, DEPLOY_REQUESTED, version)
    promotion.audit(registry, name, "deploy-triggered", version=version, via=how)
    return f"deploy:{how}"


def reconcile(registry: Registry, name: str, dispatcher: Dispatcher) -> str:
    """Catch what a lost delivery missed: deploy the champion if it is not deployed."""
    champion = registry.by_alias(name, CHAMPION)
    if champion is None:
        return "no-champion"
    if not policy.decide(champion.tags).ok:
        return handle(
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": name, "alias": CHAMPION, "version": champion.version},
            },
            registry,
            dispatcher,
        )
    if _previous_champion(registry, name, refused="") != champion.version:
        # champion moved to an approved version while no delivery arrived: record it, so a
        # later revert goes back to this version, not to the one before it
        registry.set_version_tags(
            name,
            champion.version,
            {
                promotion.PROMOTED_AT: promotion._now(),
                promotion.PROMOTED_BY: champion.tags.get(policy.APPROVAL_REVIEWER, "?"),
            },
        )
        promotion.audit(registry, name, "promote", version=champion.version, via="reconcile")
    tags = registry.model_tags(name)
    if tags.get(DEPLOYED) == champion.version:
        return "in-sync"
    if tags.get(DEPLOY_REQUESTED) == champion.version:
        return "deploy-pending"
    how = dispatcher.deploy(name, champion.version)
    registry.set_model_tag(name, DEPLOY_REQUESTED, champion.version)
    promotion.audit(
        registry, name, "deploy-triggered", version=champion.version, via=how, by="reconcile"
    )
    return f"deploy:{how}"


def _previous_champion(registry: Registry, name: str, refused: str) -> str | None:
    for entry in reversed(promotion.audit_log(registry, name)):
        if entry.get("event") in {"promote", "rollback"} and str(entry.get("version")) != refused:
            return str(entry["version"])
    return None


Approver = Callable[[tuple[str, str], dict[str, Any]], dict[str, Any]]


class Receiver:
    """The HTTP endpoint: POST /webhook (verified, acknowledged at once, handled by
    ``on_event`` on a worker thread), GET /health, and in team mode POST /approve (HTTP
    basic with the reviewer's MLflow login, handled by ``approve`` while the caller
    waits: 200, 401 wrong login, 403 refused with the reasons, 400 bad request,
    502 the registry failed)."""

    def __init__(
        self,
        verifier: Verifier,
        on_event: Callable[[dict[str, Any]], str],
        *,
        approve: Approver | None = None,
        rollback: Approver | None = None,
    ) -> None:
        self.verifier, self.on_event = verifier, on_event
        # POST /approve, /rollback (team mode): the caller's MLflow login, HTTP basic
        self.actions = {
            path: fn for path, fn in (("/approve", approve), ("/rollback", rollback)) if fn
        }
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.outcomes: list[str] = []

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/health":
                    return self._reply(404, {"ok": False})
                # pending: deliveries accepted and not handled yet (0: caught up)
                self._reply(200, {"ok": True, "pending": receiver.jobs.unfinished_tasks})

            def do_POST(self) -> None:
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
                action = receiver.actions.get(self.path)
                if action is not None:
                    auth = self.headers.get("Authorization")
                    return self._reply(*receiver.act(action, auth, body))
                if self.path != "/webhook":
                    return self._reply(404, {"error": "POST /webhook"})
                try:
                    receiver.verifier.verify(self.headers, body)
                    event = json.loads(body)
                except Rejected as exc:
                    log.warning("webhook rejected: %s", exc)
                    return self._reply(401, {"error": str(exc)})
                except ValueError:
                    return self._reply(400, {"error": "body is not JSON"})
                receiver.jobs.put(event)
                self._reply(200, {"accepted": True})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401 and self.path in receiver.actions:
                    self.send_header("WWW-Authenticate", 'Basic realm="modelyard gate"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.info("%s " + fmt, self.address_string(), *args)

        threading.Thread(target=self._work, daemon=True).start()
        return ThreadingHTTPServer((host, port), Handler)

    def act(
        self, action: Approver, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """POST /approve or /rollback: (status, reply)."""
        credentials = _basic(authorization)
        if credentials is None:
            return 401, {"error": "send your MLflow login (HTTP basic auth)"}
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError
            if action is self.actions.get("/approve") and not {"name", "version"} <= request.keys():
                raise ValueError
        except ValueError:
            return 400, {"error": 'expected JSON {"name": ..., "version": ..., "comment": ...}'}
        try:
            return 200, action(credentials, request)
        except BadCredentials as exc:
            return 401, {"error": str(exc)}
        except PromotionRefused as exc:
            return 403, {"error": str(exc)}
        except RegistryError as exc:
            log.error("approval of %s failed: %s", request, exc)
            return 502, {"error": str(exc)}

    def _work(self) -> None:
        while True:
            event = self.jobs.get()
            try:
                outcome = self.on_event(event)
            except RegistryError as exc:
                # The registry could not be read or changed: an error, never "stale".
                # Keep serving; `modelyard registry reconcile` catches up once it is back.
                log.error("webhook %s not handled: %s", event.get("data"), exc)
                outcome = f"error:{type(exc).__name__}: {exc}"
            except Exception as exc:  # keep serving; the reconciler retries what failed
                log.exception("webhook handling failed for %s", event.get("data"))
                outcome = f"error:{type(exc).__name__}: {exc}"
            self.outcomes.append(outcome)
            log.info("webhook %s -> %s", event.get("data"), outcome)
            self.jobs.task_done()


def _basic(authorization: str | None) -> tuple[str, str] | None:
    """(username, password) from an HTTP basic Authorization header."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


def install(registry: Registry, url: str, secret: str, name: str = "modelyard-review-gate") -> str:
    """Register (or update) the webhook on the MLflow server; returns its id."""
    return registry.upsert_webhook(name, url=url, events=EVENTS, secret=secret)


# -- the reviewer's side: asking the gate over HTTP ----------------------------------------


def request_approval(
    gate_url: str, credentials: tuple[str, str], name: str, version: str, *, comment: str
) -> dict[str, Any]:
    """Ask the gate to approve (the reviewer's own MLflow login). Returns the gate's
    answer; raises PromotionRefused with its reasons, RegistryError if it failed."""
    body = {"name": name, "version": version, "comment": comment}
    return _ask(gate_url, "approve", credentials, body)


def request_rollback(gate_url: str, credentials: tuple[str, str]) -> dict[str, Any]:
    """Ask the gate to roll ``champion`` back (a reviewer's own login)."""
    return _ask(gate_url, "rollback", credentials, {})


def _ask(
    gate_url: str, action: str, credentials: tuple[str, str], request: dict[str, Any]
) -> dict[str, Any]:
    try:
        status, body = http.request_json(
            "POST",
            f"{gate_url.rstrip('/')}/{action}",
            request,
            auth=credentials,
            accept=frozenset({400, 401, 403, 404}),
            timeout=300,
            attempts=2,
            what="the review gate",
        )
    except ExternalServiceError as exc:
        raise RegistryError(str(exc)) from exc
    if status == 200:
        return dict(body or {})
    message = (body or {}).get("error", f"HTTP {status}")
    raise PromotionRefused(message)
