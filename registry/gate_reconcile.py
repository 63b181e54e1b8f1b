"""The gate from the other side: webhook events on the production model and ``reconcile``
(on a schedule). A champion without a valid signed approval is put back, a removed
champion restored, a moved one recorded, renamed or remade models caught, changed files
recorded, and the champion's deploy requested once, confirmed, retried with backoff."""

import logging
from typing import Any

from core.errors import (
    ModelyardError,
    PromotionRefused,
)
from registry.approval import (
    Approval,
    check_files,
)
from registry.client import CHAMPION
from registry.gate_cards import Cards
from registry.promotion import DEPLOYED
from registry.store import REQUESTED

log = logging.getLogger(__name__)


class Reconciling(Cards):
    def handle(self, event: dict[str, Any]) -> str:
        """A verified webhook delivery: anything touching the production model's aliases
        or version tags is checked against the gate's own records (``reconcile``)."""
        data = event.get("data") or {}
        candidates = self.team.models.candidates
        if data.get("name") == candidates and data.get("alias") == CHAMPION:
            return self.reconcile()  # champion lives on the production model only
        if data.get("name") != self.production:
            return "ignored"
        if event.get("entity") not in {"model_version_alias", "model_version_tag"}:
            return "ignored"
        return self.reconcile()

    def reconcile(self) -> str:
        """Make ``champion`` what the gate approved, record what it finds, and get the
        champion deployed (idempotent). Returns what it did."""
        with self._lock:
            return self._reconcile()

    def _reconcile(self) -> str:
        model = self.production
        identity = self._identity()
        if any(f":{model}" in found for found in identity):
            return ",".join(identity)  # not the production model the gate knows: hands off
        done: list[str] = [*identity, *self._stray_champion()]
        champion = self.registry.by_alias(model, CHAMPION)
        expected = self.store.last_champion(model)
        if champion is None:
            if expected is None:
                return ",".join([*done, "no-champion"])
            self.registry.set_champion(model, expected)
            self.store.audit("alias-restored", model=model, version=expected, actor="gate")
            done.append(f"restored:{expected}")
            current = expected
        elif not self.approved(champion.version):
            if expected is not None and expected != champion.version:
                self.registry.set_champion(model, expected)
            else:
                self.registry.clear_champion(model)
                expected = None
            self.store.audit(
                "alias-reverted",
                model=model,
                version=champion.version,
                actor="gate",
                restored=expected,
                reason="no valid signed approval",
            )
            log.warning("reverted @champion of %s from v%s", model, champion.version)
            done.append(f"reverted:{expected or 'none'}")
            if expected is None:
                return ",".join(done)
            current = expected
        else:
            current = champion.version
            if current != expected:
                self.store.audit(
                    "promote-discovered",
                    model=model,
                    version=current,
                    actor="gate",
                    previous=expected,
                )
                done.append(f"recorded:{current}")
        changed = self._files_changed(current)
        if changed:  # never deploy it; an admin must look (the audit says what changed)
            done.append(f"files-changed:{current}")
            return ",".join(done)
        before = self.store.deploy(model, current)
        done.append(self._ensure_deployed(current))
        after = self.store.deploy(model, current)
        moved = any(d.startswith(("recorded:", "restored:", "reverted:")) for d in done)
        state = (before.state, before.attempts) if before else None
        if moved or state != ((after.state, after.attempts) if after else None):
            # The page shows the champion's deploy as it is now; a new champion gets
            # the open candidate's comparison recomputed against it.
            self._refresh_cards(current, candidate=None, comparison=None, challenger=moved)
        return ",".join(done)

    def _identity(self) -> list[str]:
        """Both registered models are still the ones the gate first saw: by name and
        creation time (a rename keeps the time and frees the name; a model made again
        under the name has another). Recorded the first time; a model gone
        (``model-missing``: deleted or renamed) or replaced (``model-replaced``: someone
        else may own it now) is audited once, logged as an error, and reported."""
        found = []
        for name in (self.production, self.team.models.candidates):
            created, known = self.registry.model_created(name), self.store.model_identity(name)
            if known is None:
                if created is not None:
                    self.store.audit(
                        "model-identity", model=name, version=None, actor="gate", created=created
                    )
                continue
            if created == known:
                continue
            event = "model-missing" if created is None else "model-replaced"
            log.error(
                "%s: the registered model %s is %s (created %s, now %s): an admin must look",
                event,
                name,
                "gone: deleted or renamed" if created is None else "another model",
                known,
                created,
            )
            last = self.store.audit_log(name)[-1:]
            if not last or last[0].event != event or last[0].detail.get("now") != created:
                self.store.audit(
                    event, model=name, version=None, actor="gate", known=known, now=created
                )
            found.append(f"{event}:{name}")
        return found

    def _stray_champion(self) -> list[str]:
        """``champion`` set on the candidates model (which the trainer may update): removed
        and recorded, as any unapproved move. Only the production model's is real."""
        candidates = self.team.models.candidates
        stray = self.registry.by_alias(candidates, CHAMPION)
        if stray is None:
            return []
        self.registry.clear_champion(candidates)
        self.store.audit(
            "alias-reverted",
            model=candidates,
            version=stray.version,
            actor="gate",
            restored=None,
            reason=f"champion lives on {self.production} only (moved by the review gate)",
        )
        log.warning(
            "removed @champion of %s (v%s): not the production model", candidates, stray.version
        )
        return [f"reverted-candidates:{stray.version}"]

    def _files_changed(self, version: str) -> str | None:
        """Why production ``version``'s files are not the approved ones (None: they are).
        Audited once per finding, and logged as an error each time."""
        stored = self.store.approval_for(self.production, version)
        if stored is None:
            return None
        try:
            check_files(
                self.registry,
                Approval(**stored.record),
                self.registry.version(self.production, version),
            )
        except PromotionRefused as exc:
            found = str(exc)
            log.error("%s", found)
            last = [e for e in self.store.audit_log(self.production) if e.version == version]
            if (
                not last
                or last[-1].event != "files-changed"
                or last[-1].detail.get("found") != found
            ):
                self.store.audit(
                    "files-changed",
                    model=self.production,
                    version=version,
                    actor="gate",
                    found=found,
                )
            return found
        return None

    def _ensure_deployed(self, version: str) -> str:
        model = self.production
        if self.registry.model_tags(model).get(DEPLOYED) == version:
            self.store.deployed(model, version)
            return "in-sync"
        state = self.store.deploy(model, version)
        if (
            state is not None
            and state.state == REQUESTED
            and not self.store.deploy_stale(model, version, older_than=self.backoff.confirm_within)
        ):
            return "deploy-pending"
        if not self.store.claim_deploy(model, version):
            state = self.store.deploy(model, version)
            due = state.next_attempt_at if state else None
            return f"deploy-retry-at:{due.isoformat() if due else '?'}"
        try:
            how = self.dispatcher.deploy(model, version)
        except ModelyardError as exc:
            attempts = (self.store.deploy(model, version) or state).attempts  # type: ignore[union-attr]
            failed = self.store.deploy_failed(
                model, version, str(exc), retry_in=self.backoff.after(attempts)
            )
            self.store.audit(
                "deploy-failed",
                model=model,
                version=version,
                actor="gate",
                attempts=failed.attempts,
                error=str(exc)[:500],
            )
            log.error("deploy of %s v%s failed (attempt %d): %s", model, version, attempts, exc)
            return "deploy-failed"
        self.store.audit("deploy-triggered", model=model, version=version, actor="gate", via=how)
        return f"deploy:{how}"
