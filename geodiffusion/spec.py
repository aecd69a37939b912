"""Pydantic specs: the single constructor input of every component.

A concrete class ``C`` declares ``class Spec(geodiffusion.Spec)`` with its
fields; on registration the framework derives ``C.Spec`` carrying a literal
``kind`` field, so ``build(C.Spec(...).model_dump_json())`` round-trips.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny

__all__ = ["Spec", "ComponentSpec", "component_spec", "load_spec_file"]


class Spec(BaseModel):
    """Base of every spec: unknown fields are rejected, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def with_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (a dumped spec, e.g. from a checkpoint or ``spec.json``) as this class dumps it today: fields
        added since it was written take their defaults. Data this class no longer accepts is returned unchanged,
        so comparing it with a current dump reports the difference."""
        try:
            return cls.model_validate(data).model_dump(mode="json")
        except ValueError:
            return data


def component_spec(base: type | None = None) -> Any:
    """Field type for a nested component of family ``base``: a Spec instance or a
    dict with ``kind``, validated by the registered class's Spec and serialised
    with all its fields."""

    def resolve(value: Any) -> Any:
        from geodiffusion.registry import spec_class_for, spec_owner

        if isinstance(value, Spec):
            # a Spec instance names its class directly, registered or not
            owner = spec_owner(type(value))
            if owner is None or (base is not None and not issubclass(owner, base)):
                raise ValueError(f"expected the spec of a {getattr(base, '__name__', 'component')}, got {type(value).__name__}")
            return value
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError(f"expected a spec dict with a 'kind' field, got {type(value).__name__}")
        if "kind" not in value:
            raise ValueError("a component spec needs a 'kind' field")
        return spec_class_for(value["kind"], base).model_validate(value)

    return SerializeAsAny[Annotated[Spec, BeforeValidator(resolve)]]


ComponentSpec = component_spec(None)
"""Field type for a nested component of any family."""


def load_spec_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML spec file into a dict (YAML needs PyYAML)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
