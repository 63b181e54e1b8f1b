"""The MLflow Model Registry, as modelyard uses it: versions, lineage tags, aliases.

Everything that reads or changes shared registry state goes through ``Registry``.
Aliases replace the deprecated stages: ``challenger`` is set by ``register``;
``champion`` only by the review gate (promotion), never by the pipeline.

Absence is not failure: only MLflow's ``RESOURCE_DOES_NOT_EXIST`` means "no such model"
(and a missing alias means "no such alias"). Any other MLflow error (an auth refusal, a
5xx, a network failure, a timeout) raises ``RegistryError`` naming the store and the
cause, so a command stops instead of acting as if there were no champion.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ABSENT = "RESOURCE_DOES_NOT_EXIST"  # the one MLflow error code that means "not there"


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    model_id: str | None = None  # the logged model (MLflow 3) the version was made from
    description: str = ""


@dataclass(frozen=True)
class Run:
    """What a run logged: its experiment, its last metric values, its tags."""

    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    tags: dict[str, str]


class Registry:
    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- reading -------------------------------------------------------------------------

    def versions(self, name: str) -> list[Version]:
        with self._errors(f"list the versions of {name!r}"):
            found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        return sorted((self._version(v) for v in found), key=lambda v: int(v.version))

    def by_alias(self, name: str, alias: str) -> Version | None:
        """The version ``alias`` points at; None if the model or the alias does not exist."""
        model = self._model(name)
        if model is None:
            return None
        aliases: dict[str, str] = {str(k): str(v) for k, v in (model.aliases or {}).items()}
        if alias not in aliases:
            return None
        number = aliases[alias]
        with self._errors(f"read {name} v{number} (@{alias})"):
            mv = self.client.get_model_version(name, number)
        return self._version(mv, aliases=sorted(a for a, v in aliases.items() if v == number))

    def default_ref(self, name: str) -> tuple[str, bool]:
        """What to serve when no version is named: ``NAME@champion``, or ``NAME@challenger``
        while there is no champion (the flag says it fell back)."""
        if self.by_alias(name, CHAMPION) is not None:
            return f"{name}@{CHAMPION}", False
        return f"{name}@{CHALLENGER}", True

    def find_by_tag(self, name: str, key: str, value: str) -> Version | None:
        """The first version of ``name`` whose tag ``key`` equals ``value``."""
        if self._model(name) is None:
            return None
        return next((v for v in self.versions(name) if v.tags.get(key) == value), None)

    def download(self, name: str, version: str, dest: Path | None = None) -> Path:
        """The version's model folder (holding model.onnx and MLmodel), downloaded."""
        import mlflow

        dest = dest or Path(tempfile.mkdtemp(prefix="modelyard-model-"))
        # models:/ URIs resolve through the process-wide registry URI, not tracking_uri=.
        mlflow.set_registry_uri(self.uri)
        with self._errors(f"download {name} v{version}"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(dest), tracking_uri=self.uri
            )
        return Path(local)

    def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        """The ``metadata`` block of the version's MLmodel file (only that file is fetched);
        empty if the version was logged without one."""
        import mlflow
        import yaml

        with self._errors(f"read the MLmodel of {name} v{version}"):
            folder = self.client.get_model_version_download_uri(name, version)
            with tempfile.TemporaryDirectory(prefix="modelyard-mlmodel-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{folder.rstrip('/')}/MLmodel",
                    dst_path=tmp,
                    tracking_uri=self.uri,
                )
                with open(local, encoding="utf-8") as fh:
                    mlmodel = yaml.safe_load(fh) or {}
        return dict(mlmodel.get("metadata") or {})

    def file_sha256(self, name: str, version: str, filename: str = "model.onnx") -> str | None:
        """The sha256 of one file of the version's model folder (only it is fetched);
        None if the folder holds no such file."""
        import mlflow
        from mlflow.exceptions import MlflowException

        from core import files

        with tempfile.TemporaryDirectory(prefix="modelyard-file-") as tmp:
            try:
                folder = self.client.get_model_version_download_uri(name, version)
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{folder.rstrip('/')}/{filename}",
                    dst_path=tmp,
                    tracking_uri=self.uri,
                )
            except MlflowException as exc:
                if exc.error_code == ABSENT:
                    return None
                raise self._failure(f"download {filename} of {name} v{version}", exc) from exc
            except OSError as exc:
                raise self._failure(f"download {filename} of {name} v{version}", exc) from exc
            path = Path(local)
            return files.sha256(path) if path.is_file() else None

    def download_artifacts(self, uri: str, dest: Path | None = None) -> Path:
        """A run artifact (``runs:/<run>/<path>``: a file or folder), downloaded."""
        import mlflow

        dest = dest or Path(tempfile.mkdtemp(prefix="modelyard-artifact-"))
        with self._errors(f"download {uri}"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dest), tracking_uri=self.uri
            )
        return Path(local)

    def model_tags(self, name: str) -> dict[str, str]:
        model = self._model(name)
        if model is None:
            raise RegistryError(f"no registered model {name!r} in {self.uri}")
        return dict(model.tags or {})

    def version(self, name: str, version: str) -> Version:
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self.client.get_model_version(name, version))
        except MlflowException as exc:
            if exc.error_code == ABSENT:
                raise RegistryError(f"{name} has no version {version} in {self.uri}") from exc
            raise self._failure(f"read {name} v{version}", exc) from exc

    def run(self, run_id: str) -> Run | None:
        """The run; None only if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == ABSENT:
                return None
            raise self._failure(f"read run {run_id}", exc) from exc
        return Run(
            run_id=found.info.run_id,
            experiment_id=str(found.info.experiment_id),
            metrics=dict(found.data.metrics),
            tags=dict(found.data.tags),
        )

    def logged_model_origin(self, model_id: str) -> tuple[str | None, str] | None:
        """(source run id, experiment id) of a logged model; None if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_logged_model(model_id)
        except MlflowException as exc:
            if exc.error_code == ABSENT:
                return None
            raise self._failure(f"read the logged model {model_id}", exc) from exc
        return found.source_run_id, str(found.experiment_id)

    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``; None if it does not exist."""
        with self._errors(f"read the experiment {name!r}"):
            found = self.client.get_experiment_by_name(name)
        return str(found.experiment_id) if found is not None else None

    # -- writing -------------------------------------------------------------------------

    def ensure_experiment(self, name: str) -> tuple[str, bool]:
        """(id, created?) of experiment ``name``, created if missing."""
        found = self.experiment_id(name)
        if found is not None:
            return found, False
        with self._errors(f"create the experiment {name!r}"):
            return str(self.client.create_experiment(name)), True

    def ensure_model(self, name: str, description: str = "") -> bool:
        """Create the registered model ``name`` if missing; True if it was created."""
        if self._model(name) is not None:
            return False
        with self._errors(f"create the registered model {name!r}"):
            self.client.create_registered_model(name, description=description or None)
        return True

    def register(
        self,
        name: str,
        model_uri: str,
        run_id: str,
        tags: dict[str, Any],
        description: str = "",
    ) -> Version:
        """Create version N of ``name`` from a logged model, with its lineage tags."""
        if self._model(name) is None:
            with self._errors(f"create the registered model {name!r}"):
                self.client.create_registered_model(
                    name,
                    description="Registered by the modelyard pipeline (`modelyard register`).",
                )
        model_id = (
            model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        )
        with self._errors(f"create a version of {name!r}"):
            mv = self.client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags={k: str(v) for k, v in tags.items()},
                description=description or None,
                model_id=model_id,
            )
        return self._version(mv)

    def copy_version(self, name: str, version: str, dest: str, *, tags: dict[str, str]) -> Version:
        """A new version of ``dest`` made from ``name`` vN (what copy_model_version does),
        carrying only ``tags``: nothing editable on the source is copied but its
        description."""
        source = self.version(name, version)
        with self._errors(f"copy {name} v{version} to {dest}"):
            # The server takes the run and logged model from the source version.
            mv = self.client.create_model_version(
                dest,
                source=f"models:/{name}/{version}",
                tags=tags,
                description=source.description or None,
            )
        return self._version(mv)

    def keep_folder(
        self,
        experiment_id: str,
        folder: Path,
        *,
        run_name: str,
        beside: Mapping[str, Path] | None = None,
    ) -> tuple[str, str]:
        """Log ``folder`` as the artifacts (``model/``) of a new, finished run in
        ``experiment_id``, and each folder of ``beside`` under its name; returns (the
        run's id, the model folder's artifact URI; the others are ``<run>/<name>``). The
        gate keeps what it approved this way, in an experiment only it may write to."""
        with self._errors(f"keep {folder.name} in experiment {experiment_id}"):
            run = self.client.create_run(experiment_id, run_name=run_name)
            self.client.log_artifacts(run.info.run_id, str(folder), "model")
            for name, extra in (beside or {}).items():
                self.client.log_artifacts(run.info.run_id, str(extra), name)
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id, f"{run.info.artifact_uri.rstrip('/')}/model"

    def create_version(
        self,
        name: str,
        source: str,
        *,
        run_id: str | None = None,
        tags: dict[str, str],
        description: str = "",
    ) -> Version:
        """A new version of ``name`` whose files are ``source`` (an artifact URI; the
        server wants the run whose artifacts hold it)."""
        with self._errors(f"create a version of {name!r} from {source}"):
            mv = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=tags, description=description or None
            )
        return self._version(mv)

    def set_description(self, name: str, version: str, text: str) -> None:
        with self._errors(f"describe {name} v{version}"):
            self.client.update_model_version(name, version, description=text)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if alias == CHAMPION:
            raise RegistryError("the pipeline never sets `champion`: promotion does (review gate)")
        with self._errors(f"point @{alias} of {name} at v{version}"):
            self.client.set_registered_model_alias(name, alias, version)

    def set_champion(self, name: str, version: str) -> None:
        """Only registry.promotion (and the webhook receiver's revert) call this."""
        with self._errors(f"point @{CHAMPION} of {name} at v{version}"):
            self.client.set_registered_model_alias(name, CHAMPION, version)

    def clear_champion(self, name: str) -> None:
        """Remove ``champion`` (the webhook receiver's revert when there was none before)."""
        with self._errors(f"remove @{CHAMPION} of {name}"):
            self.client.delete_registered_model_alias(name, CHAMPION)

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        with self._errors(f"tag {name} v{version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, str(value))

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        with self._errors(f"remove the tag {key} of {name} v{version}"):
            self.client.delete_model_version_tag(name, version, key)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self._errors(f"tag the registered model {name}"):
            self.client.set_registered_model_tag(name, key, value)

    def upsert_webhook(self, name: str, *, url: str, events: list[Any], secret: str) -> str:
        """Create the webhook ``name``, or update it if it exists; returns its id."""
        with self._errors(f"install the webhook {name!r}"):
            for hook in self.client.list_webhooks():
                if hook.name == name:
                    self.client.update_webhook(
                        hook.webhook_id, url=url, events=events, secret=secret
                    )
                    return str(hook.webhook_id)
            created = self.client.create_webhook(name=name, url=url, events=events, secret=secret)
        return str(created.webhook_id)

    # -- helpers -------------------------------------------------------------------------

    def model_created(self, name: str) -> int | None:
        """When the registered model ``name`` was created (ms; None: there is none). A
        rename keeps it, a model deleted and made again under the name does not: with the
        name, it tells one model from another (MLflow gives models no other id)."""
        model = self._model(name)
        return int(model.creation_timestamp) if model is not None else None

    def _model(self, name: str) -> Any | None:
        """The registered model, or None if it does not exist (and only then)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == ABSENT:
                return None
            raise self._failure(f"read the registered model {name!r}", exc) from exc

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """MLflow (and network/file) errors inside as RegistryError saying what failed."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: Exception) -> RegistryError:
        code = getattr(exc, "error_code", type(exc).__name__)
        return RegistryError(
            f"cannot {what}: the MLflow registry at {self.uri} answered {code}: {exc}. "
            "Check MLFLOW_TRACKING_URI, that the server is up, and the credentials "
            "(MLFLOW_TRACKING_USERNAME/PASSWORD); nothing was assumed absent."
        )

    def _version(self, mv: Any, aliases: list[str] | None = None) -> Version:
        return Version(
            name=mv.name,
            version=str(mv.version),
            source=mv.source,
            run_id=mv.run_id,
            tags=dict(mv.tags or {}),
            aliases=list(aliases if aliases is not None else (mv.aliases or [])),
            model_id=getattr(mv, "model_id", None) or _model_id(mv.source),
            description=mv.description or "",
        )


def _model_id(source: str | None) -> str | None:
    """``m-<id>`` from a ``models:/m-<id>`` source (MLflow 3 logged models)."""
    if source and source.startswith("models:/m-"):
        return source.removeprefix("models:/").split("/")[0]
    return None


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
