"""Who may do what on the team's MLflow server: ``team.yaml``, and applying it.

``team.yaml`` names the trainer's experiment, the two registered models and every user
with one role::

    experiment: modelyard                   # the CI trainer's runs (params: tracking.experiment)
    approved: modelyard-approved            # the gate's copies of what it approved (default)
    models:
      candidates: digits-classifier         # CI registers here (params: register.model_name)
      production: digits-classifier-prod    # `champion` lives here; only the gate writes
    users:
      dana: {role: data_scientist, github: dana-gh, emails: [dana@example.com]}
      ci-trainer: {role: trainer}
      rui: {role: reviewer, github: rui-gh, emails: [rui@example.com]}
      gate: {role: gate}

One person, many names: a user's MLflow login (the key), GitHub login and commit
emails all name that person. Four eyes compares persons, and a run whose author (CI's
GITHUB_ACTOR) or commit author (the email) names nobody here is refused.

Why two models: creating a version and moving an alias need the same right (update) on a
registered model, so one model cannot let the trainer register while forbidding it to move
``champion``. The trainer may update ``candidates``; only the gate may update
``production`` (it copies an approved candidate there and moves ``champion``). The gate
may update ``candidates`` too, to rewrite the open candidate's model card against a new
champion; everyone else reads. Only the trainer may write to the experiment, so a run there was produced by
the trainer: that is what the gate trusts as evidence.

``apply`` makes the server match the file and is idempotent: it creates the experiment,
the two models and missing users (password from ``password_env``, default
``MODELYARD_PASSWORD_<USER>``), sets each listed user's grants on those three resources
to its role's, and changes nothing else (existing passwords, other users, other resources).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from registry.auth import AuthAPI, Grant
from registry.client import Registry

Role = Literal["data_scientist", "trainer", "reviewer", "gate"]
Resource = Literal["experiment", "approved", "candidates", "production"]

# What each role may do on the three resources (MLflow: READ < EDIT < MANAGE).
# ``approved``: the experiment where the gate keeps a copy of each approved model folder,
# the files production versions point at; only the gate writes there.
ACCESS: dict[str, dict[Resource, str]] = {
    "data_scientist": {
        "experiment": "READ", "approved": "READ", "candidates": "READ", "production": "READ"
    },
    "trainer": {
        "experiment": "EDIT", "approved": "READ", "candidates": "EDIT", "production": "READ"
    },
    "reviewer": {
        "experiment": "READ", "approved": "READ", "candidates": "READ", "production": "READ"
    },
    # MANAGE on both models: the gate rewrites the open candidate's card when champion moves
    # (update rights) and removes a `champion` it did not set, there or on production
    # (MLflow wants MANAGE to delete an alias); it registers nothing on candidates.
    "gate": {
        "experiment": "READ", "approved": "EDIT", "candidates": "MANAGE", "production": "MANAGE"
    },
}  # fmt: skip
MIN_PASSWORD = 12  # MLflow refuses shorter ones


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Member(_Strict):
    role: Role
    # The login CI records as the author of a training run (GITHUB_ACTOR): four eyes
    # compares a reviewer's login and this with the run's author.
    github: str | None = None
    # The emails this person commits with: four eyes maps a commit's author to them.
    emails: list[str] = Field(default_factory=list)
    password_env: str | None = None


class Models(_Strict):
    candidates: str
    production: str


class Team(_Strict):
    experiment: str
    approved: str = ""  # default: "<experiment>-approved"
    models: Models
    users: dict[str, Member] = Field(min_length=1)

    @property
    def approved_experiment(self) -> str:
        return self.approved or f"{self.experiment}-approved"

    def users_with(self, role: str) -> list[str]:
        return sorted(name for name, m in self.users.items() if m.role == role)

    def role(self, username: str) -> str | None:
        member = self.users.get(username)
        return member.role if member else None

    def identities(self, username: str) -> set[str]:
        """Every name ``username`` is known by (its MLflow login, its GitHub login, its
        commit emails), lower-cased."""
        member = self.users.get(username)
        names = {username, member.github if member and member.github else ""}
        names |= set(member.emails) if member else set()
        return {n.strip().lower() for n in names if n and n.strip()}

    def people(self) -> dict[str, str]:
        """Each known name (lower-cased) -> the person (MLflow login) it names."""
        return {name: user for user in self.users for name in self.identities(user)}

    def password_env(self, username: str) -> str:
        member = self.users[username]
        return member.password_env or "MODELYARD_PASSWORD_" + re.sub(
            r"[^A-Z0-9]", "_", username.upper()
        )


def load(path: Path) -> Team:
    """team.yaml, checked (an unknown key or role is an error naming where)."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        team = Team.model_validate(raw)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: write the team file (see docs/team.md)") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path} is not a valid team file:\n{exc}") from exc
    if not team.users_with("gate"):
        raise ConfigError(f"{path}: no user has role gate (the account that moves champion)")
    claimed: dict[str, str] = {}
    for user in sorted(team.users):
        for name in team.identities(user):
            if claimed.setdefault(name, user) != user:
                raise ConfigError(
                    f"{path}: {name!r} names both {claimed[name]} and {user}: one name, one person"
                )
    if team.models.candidates == team.models.production:
        raise ConfigError(f"{path}: models.candidates and models.production must differ")
    return team


@dataclass(frozen=True)
class Applied:
    """What ``apply`` changed (empty lists: the server already matched the file)."""

    created: list[str] = field(default_factory=list)  # resources and users
    granted: list[str] = field(default_factory=list)  # "user: PERMISSION on resource"

    @property
    def changed(self) -> bool:
        return bool(self.created or self.granted)


def grants_for(team: Team, experiment_id: str, approved_id: str) -> dict[str, list[Grant]]:
    """Each listed user's grants, from its role. Pure."""
    ids: dict[Resource, tuple[str, str]] = {
        "experiment": ("experiment", experiment_id),
        "approved": ("experiment", approved_id),
        "candidates": ("registered_model", team.models.candidates),
        "production": ("registered_model", team.models.production),
    }
    return {
        name: [Grant(*ids[res], perm) for res, perm in ACCESS[member.role].items()]
        for name, member in sorted(team.users.items())
    }


def apply(
    team: Team, *, admin: AuthAPI, registry: Registry, password: Callable[[str], str | None]
) -> Applied:
    """Make the server match ``team`` (see the module docstring). ``password`` reads an
    environment variable by name (new users only). Raises ConfigError, before changing
    anything, if a new user's password is missing or too short."""
    missing = [u for u in sorted(team.users) if admin.get_user(u) is None]
    passwords = {u: password(team.password_env(u)) or "" for u in missing}
    problems = [
        f"{u}: set {team.password_env(u)} (at least {MIN_PASSWORD} characters)"
        for u in missing
        if len(passwords[u]) < MIN_PASSWORD
    ]
    if problems:
        raise ConfigError("new users need a password:\n  " + "\n  ".join(problems))

    created: list[str] = []
    experiment_id, made = registry.ensure_experiment(team.experiment)
    if made:
        created.append(f"experiment {team.experiment}")
    approved_id, made = registry.ensure_experiment(team.approved_experiment)
    if made:
        created.append(f"experiment {team.approved_experiment}")
    for model in (team.models.candidates, team.models.production):
        if registry.ensure_model(model):
            created.append(f"registered model {model}")
    for user in missing:
        admin.create_user(user, passwords[user])
        created.append(f"user {user}")

    granted: list[str] = []
    for user, wanted in grants_for(team, experiment_id, approved_id).items():
        have = {(g.resource_type, g.resource_id): g.permission for g in admin.grants(user)}
        for grant in wanted:
            now = have.get((grant.resource_type, grant.resource_id))
            if now == grant.permission:
                continue
            if now is not None:
                admin.revoke(user, grant.resource_type, grant.resource_id)
            admin.grant(user, grant)
            granted.append(
                f"{user}: {grant.permission} on {grant.resource_type} {grant.resource_id}"
            )
    return Applied(created, granted)
