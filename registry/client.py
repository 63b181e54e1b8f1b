"""The MLflow Model Registry, as modelyard uses it: versions, lineage tags, aliases.

Everything that reads or changes shared registry state goes through ``Registry``.
Aliases replace the deprecated stages: ``challenger`` is set by ``register``;
``champion`` only by the review gate (promotion), never by the pipeline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


class Registry:
    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- reading -------------------------------------------------------------------------

    def versions(self, name: str) -> list[Version]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        except MlflowException as exc:
            raise RegistryError(f"cannot list versions of {name!r} at {self.uri}: {exc}") from exc
        return sorted((self._version(v) for v in found), key=lambda v: int(v.version))

    def by_alias(self, name: str, alias: str) -> Version | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None  # no such model or alias: both mean "none yet"
        return self._version(mv, aliases=[alias])

    def default_ref(self, name: str) -> tuple[str, bool]:
        """What to serve when no version is named: ``NAME@champion``, or ``NAME@challenger``
        while there is no champion (the flag says it fell back)."""
        if self.by_alias(name, CHAMPION) is not None:
            return f"{name}@{CHAMPION}", False
        return f"{name}@{CHALLENGER}", True

    def find_by_tag(self, name: str, key: str, value: str) -> Version | None:
        """The first version of ``name`` whose tag ``key`` equals ``value``."""
        if not self._exists(name):
            return None
        return next((v for v in self.versions(name) if v.tags.get(key) == value), None)

    def download(self, name: str, version: str, dest: Path | None = None) -> Path:
        """The version's model folder (holding model.onnx and MLmodel), downloaded."""
        import mlflow

        dest = dest or Path(tempfile.mkdtemp(prefix="modelyard-model-"))
        # models:/ URIs resolve through the process-wide registry URI, not tracking_uri=.
        mlflow.set_registry_uri(self.uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(dest), tracking_uri=self.uri
        )
        return Path(local)

    def download_artifacts(self, uri: str, dest: Path | None = None) -> Path:
        """A run artifact (``runs:/<run>/<path>``: a file or folder), downloaded."""
        import mlflow
        from mlflow.exceptions import MlflowException

        dest = dest or Path(tempfile.mkdtemp(prefix="modelyard-artifact-"))
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dest), tracking_uri=self.uri
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot download {uri} from {self.uri}: {exc}") from exc
        return Path(local)

    # -- writing -------------------------------------------------------------------------

    def register(
        self, name: str, model_uri: str, run_id: str, tags: dict[str, Any], description: str = ""
    ) -> Version:
        """Create version N of ``name`` from a logged model, with its lineage tags."""
        if not self._exists(name):
            self.client.create_registered_model(
                name, description="Registered by the modelyard pipeline (`modelyard register`)."
            )
        mv = self.client.create_model_version(
            name, source=model_uri, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
            description=description or None,
            model_id=model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None,
        )  # fmt: skip
        return self._version(mv)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if alias == CHAMPION:
            raise RegistryError("the pipeline never sets `champion`: promotion does (review gate)")
        self.client.set_registered_model_alias(name, alias, version)

    def set_champion(self, name: str, version: str) -> None:
        """Only registry.promotion calls this, after the review gate said yes."""
        self.client.set_registered_model_alias(name, CHAMPION, version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

    def model_tags(self, name: str) -> dict[str, str]:
        return dict(self.client.get_registered_model(name).tags or {})

    def version(self, name: str, version: str) -> Version:
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self.client.get_model_version(name, version))
        except MlflowException as exc:
            raise RegistryError(f"{name} has no version {version} in {self.uri}") from exc

    # -- helpers -------------------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            return False
        return True

    def _version(self, mv: Any, aliases: list[str] | None = None) -> Version:
        return Version(
            name=mv.name,
            version=str(mv.version),
            source=mv.source,
            run_id=mv.run_id,
            tags=dict(mv.tags or {}),
            aliases=list(aliases if aliases is not None else (mv.aliases or [])),
        )


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
