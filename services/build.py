"""Build a Bento from an exact registry version: `modelyard build --model NAME@ALIAS`.

1. resolve the version in MLflow (``NAME@ALIAS`` or ``NAME/VERSION``);
2. download it and check the ONNX file's sha256 against the ``onnx.sha256`` tag;
3. import it into the BentoML model store (``model.onnx`` + ``contract.json``), with the
   lineage as labels;
4. run ``bentoml build`` with ``services/bentofile.yaml``; the Bento is named after the
   model and versioned ``v<N>-<hash>``, its labels name the registry version.

With ``--shadow NAME@challenger`` (or ``NAME/VERSION``) a second version goes through
steps 1-3 too and the Bento carries it (build argument ``shadow_tag``, labels
``shadow_model``, ``shadow_model_version``, ``shadow_onnx_sha256``; versioned
``v<N>-shadow-v<M>-<hash>``): the service scores every request with it off the
response path. It must have the champion's features and classes.

Nothing is rebuilt when the Bento for that version and this service code exists.
This module runs in the build environment; the service itself never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core import tools
from core.errors import ConfigError, RegistryError
from core.files import sha256
from core.tagkeys import ApprovalTag, LineageTag
from registry.client import Registry, Version

log = logging.getLogger(__name__)

BENTOFILE = "services/bentofile.yaml"
REF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Built:
    name: str
    version: str
    model_tag: str
    bento_tag: str
    created: bool
    shadow: str | None = None  # the challenger scored in shadow, NAME/VERSION
    shadow_tag: str | None = None  # its BentoML model


@dataclass(frozen=True)
class _Stored:
    """A registry version in BentoML's model store."""

    version: Version
    model_tag: str
    sha256: str
    created: bool


def resolve(registry: Registry, ref: str) -> Version:
    match = REF.match(ref)
    if not match:
        raise ConfigError(
            f"--model {ref!r}: expected NAME@ALIAS (e.g. digits-classifier@champion) or NAME/VERSION"
        )
    name = match["name"]
    if match["alias"]:
        found = registry.by_alias(name, match["alias"])
        if found is None:
            raise RegistryError(
                f"{name} has no version with alias @{match['alias']} in {registry.uri}"
            )
        return found
    for v in registry.versions(name):
        if v.version == match["version"]:
            return v
    raise RegistryError(f"{name} has no version {match['version']} in {registry.uri}")


def service_files(root: Path) -> list[str]:
    """Every file the Bento is made of, as the bentofile names them: its includes, the
    requirements and the image's setup script. They version the Bento: an edit to any of
    them builds a new one."""
    spec = yaml.safe_load((root / BENTOFILE).read_text())
    extra = [spec["python"]["requirements_txt"], (spec.get("docker") or {}).get("setup_script")]
    return [BENTOFILE, *spec["include"], *(rel for rel in extra if rel)]


def code_root() -> Path:
    """The folder holding the ``services`` package: the Bento's build context."""
    return Path(__file__).resolve().parents[1]


def build(ref: str, registry: Registry, *, shadow: str | None = None) -> Built:
    """The Bento serving ``ref`` (and scoring ``shadow`` beside it), built if missing."""
    import bentoml

    root = code_root()
    version = resolve(registry, ref)
    shadow_version = _shadow_version(registry, shadow, version) if shadow else None
    if shadow_version is not None:
        _same_contract(registry, version, shadow_version)  # before anything is imported
    champion = _store(bentoml, registry, version)
    challenger = _store(bentoml, registry, shadow_version) if shadow_version else None

    code = hashlib.sha256()
    for rel in service_files(root):
        code.update((root / rel).read_bytes())
    models = champion.sha256
    if challenger is not None:
        models += f"{challenger.version.name}/{challenger.version.version}:{challenger.sha256}"
    digest = hashlib.sha256((models + code.hexdigest()).encode()).hexdigest()[:10]
    shadowed = f"shadow-v{challenger.version.version}-" if challenger else ""
    bento_tag = f"{version.name}:v{version.version}-{shadowed}{digest}"
    built = Built(
        version.name,
        version.version,
        champion.model_tag,
        bento_tag,
        True,
        f"{challenger.version.name}/{challenger.version.version}" if challenger else None,
        challenger.model_tag if challenger else None,
    )
    if _exists(bentoml.get, bento_tag, bentoml.exceptions.NotFound):
        log.info("Bento %s exists; nothing to build", bento_tag)
        created = champion.created or bool(challenger and challenger.created)
        return dataclasses.replace(built, created=created)
    labels = {
        "model": version.name, "model_version": version.version,
        "git_commit": version.tags.get(LineageTag.GIT_COMMIT, "unknown"),
        "onnx_sha256": champion.sha256, "variant": version.tags.get(LineageTag.MODEL_VARIANT, "fp32"),
        # the signed manifest of every approved file (registry.manifest), when the gate made it
        "manifest_sha256": version.tags.get(ApprovalTag.MANIFEST_SHA256, "none"),
    }  # fmt: skip
    args = [f"model_tag={champion.model_tag}"]
    if challenger is not None:
        labels.update(
            shadow_model=challenger.version.name,
            shadow_model_version=challenger.version.version,
            shadow_onnx_sha256=challenger.sha256,
            shadow_variant=challenger.version.tags.get(LineageTag.MODEL_VARIANT, "fp32"),
        )
        args.append(f"shadow_tag={challenger.model_tag}")
    bentoml_bin = tools.binary("bentoml")
    cmd = [bentoml_bin, "build", "-f", BENTOFILE, "--name", version.name,
           "--version", bento_tag.split(":")[1],
           *[arg for a in args for arg in ("--arg", a)],
           *[arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")], "."]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=tools.env())
    if proc.returncode != 0:
        raise RegistryError(f"bentoml build failed:\n{proc.stdout}\n{proc.stderr}")
    return built


def _store(bentoml: Any, registry: Registry, version: Version) -> _Stored:
    """Download ``version``, check its sha256 against the registry's tag, import it into
    BentoML's model store (if not there yet)."""
    expected = version.tags.get(LineageTag.ONNX_SHA256)
    if not expected:
        raise RegistryError(
            f"{version.name} v{version.version} has no onnx.sha256 tag: not registered by modelyard"
        )
    # The download is only needed until the model is in BentoML's store: never left behind.
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as scratch:
        folder = registry.download(version.name, version.version, Path(scratch))
        onnx_file = folder / "model.onnx"
        actual = sha256(onnx_file)
        if actual != expected:
            raise RegistryError(
                f"{version.name} v{version.version}: the downloaded model.onnx has sha256 {actual}, "
                f"the registry tag says {expected}. The artifact changed after registration; refusing to build."
            )
        _check_approved(version, folder)
        model_tag = f"{version.name}:v{version.version}-{actual[:12]}"
        contract = _contract(version, folder, actual)
        created = _import_model(bentoml, model_tag, onnx_file, contract)
    return _Stored(version, model_tag, actual, created)


def _check_approved(version: Version, folder: Path) -> None:
    """A version the review gate approved (it carries the gate's record; only the gate
    writes production versions' tags): every downloaded file must be one the approval
    lists, and with the gate's public key set (MODELYARD_GATE_PUBLIC_KEY) the record must carry
    the gate's signature."""
    from core import settings
    from core.errors import PromotionRefused
    from registry import keys
    from registry.approval import Approval, folder_differences
    from registry.keys import RECORD_TAG, SIGNATURE_TAG

    record = version.tags.get(RECORD_TAG)
    if not record:
        return
    label = f"{version.name} v{version.version}"
    key = keys.verifier_from_settings(settings.current())
    if key:
        verdict = keys.check(key, record, version.tags.get(SIGNATURE_TAG, ""))
        if not verdict.ok:
            raise PromotionRefused(f"{label}: not building it: {verdict.reason}")
    approval = Approval(**json.loads(record))
    if (approval.production_name, approval.production_version) != (version.name, version.version):
        raise PromotionRefused(
            f"{label}: its approval is for {approval.production_name} "
            f"v{approval.production_version}: not building it"
        )
    found = folder_differences(approval, folder) if approval.manifest else []
    if found:
        raise PromotionRefused(
            f"{label}: its files are not the ones approved: {'; '.join(found)}: not building it"
        )


def _shadow_version(registry: Registry, ref: str, champion: Version) -> Version:
    if not REF.match(ref):
        raise ConfigError(
            f"--shadow {ref!r}: expected NAME@ALIAS (e.g. digits-classifier@challenger) "
            "or NAME/VERSION"
        )
    found = resolve(registry, ref)
    if (found.name, found.version) == (champion.name, champion.version):
        raise ConfigError(
            f"--shadow {ref} is {found.name} v{found.version}, the version being served: "
            "shadow a different version (e.g. the @challenger once it differs from the champion)"
        )
    return found


def _same_contract(registry: Registry, champion: Version, challenger: Version) -> None:
    """The challenger scores the champion's parsed rows: same features, same classes."""
    schemas = [
        registry.model_metadata(v.name, v.version).get("schema") for v in (champion, challenger)
    ]
    ours, theirs = schemas
    if not ours or not theirs:
        return  # _store says which one has no schema
    for what, read in (
        ("features", lambda schema: [f["name"] for f in schema["features"]]),
        ("classes", lambda schema: list(schema["classes"])),
    ):
        if read(ours) != read(theirs):
            c, s = champion, challenger
            raise ConfigError(
                f"--shadow {s.name}/{s.version} has other {what} than {c.name} v{c.version} "
                f"({len(read(theirs))} vs {len(read(ours))}): it cannot score the same "
                "requests. Shadow a version trained on the same features and classes."
            )


def _contract(version: Version, folder: Path, sha: str) -> dict[str, Any]:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    schema = (mlmodel.get("metadata") or {}).get("schema")
    if not schema:
        raise RegistryError(
            f"{version.name} v{version.version}: MLmodel has no feature schema in its metadata"
        )
    tags = version.tags
    return {
        "name": version.name,
        "version": version.version,
        "variant": tags.get(LineageTag.MODEL_VARIANT, "fp32"),
        "git_commit": tags.get(LineageTag.GIT_COMMIT),
        "data_md5": tags.get(LineageTag.DVC_DATA_MD5),
        "onnx_sha256": sha,
        "metrics": {
            k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")
        },
        "schema": schema,
        "lineage": tags,
    }


def _import_model(bentoml: Any, tag: str, onnx_file: Path, contract: dict[str, Any]) -> bool:
    if _exists(bentoml.models.get, tag, bentoml.exceptions.NotFound):
        return False
    # onnx_sha256 travels in the model's labels and the Bento's: the service checks the
    # file against them, not only against contract.json beside it.
    labels = {"mlflow_model": contract["name"], "mlflow_version": contract["version"],
              "git_commit": str(contract["git_commit"]), "variant": contract["variant"],
              "onnx_sha256": contract["onnx_sha256"]}  # fmt: skip
    with bentoml.models.create(
        tag, labels=labels, metadata={"onnx_sha256": contract["onnx_sha256"]}
    ) as model:
        shutil.copy(onnx_file, model.path_of("model.onnx"))
        Path(model.path_of("contract.json")).write_text(json.dumps(contract, indent=2))
    log.info("imported %s into the BentoML model store", tag)
    return True


def _exists(get: Any, tag: str, not_found: type[Exception]) -> bool:
    try:
        get(tag)
    except not_found:
        return False
    return True
