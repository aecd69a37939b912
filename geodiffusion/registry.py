"""Self-registering components, ``build`` and ``registry``.

Each abstract base class (Group, Manifold, ...) opens a *family*; every
concrete subclass registers itself in its family under a lower-case ``kind``
when the class statement runs, so a user's class defined in their own module
is built and listed exactly like a built-in one.

Name note: the package re-exports the function :func:`registry` at the top level, so the attribute
``geodiffusion.registry`` is that function, not this module (even after ``import geodiffusion.registry``,
and ``import geodiffusion.registry as m`` binds the function too). Import names from the module with
``from geodiffusion.registry import build, families, spec_class_for``, which always resolves the module;
to hold the module object itself use ``importlib.import_module("geodiffusion.registry")``.
"""

from __future__ import annotations

import json
import re
from abc import ABC
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import create_model

from geodiffusion.spec import Spec

__all__ = ["Component", "build", "registry", "unregister", "spec_class_for", "spec_owner", "families"]

_FAMILIES: dict[type, dict[str, type]] = {}
_SPEC_OWNER: dict[type, type] = {}
_KIND_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

C = TypeVar("C", bound="Component")


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _is_abstract(cls: type) -> bool:
    # ABCMeta fills __abstractmethods__ only after __init_subclass__ has run,
    # so abstractness is read off the attributes themselves.
    return any(getattr(getattr(cls, name, None), "__isabstractmethod__", False) for name in dir(cls))


class Component(ABC):
    """Something built from a validated spec: ``cls(spec)`` or ``cls(**fields)``.

    Subclass keywords: ``kind="..."`` overrides the snake-cased class name;
    ``register=False`` keeps a class (a test double, say) out of the registry;
    abstract classes and private ones (leading underscore) are never registered;
    ``family=True`` marks an abstract base class that opens a family.
    """

    Spec: ClassVar[type[Spec]] = Spec
    kind: ClassVar[str] = ""
    family: ClassVar[type | None] = None

    def __init_subclass__(cls, *, kind: str | None = None, register: bool = True, family: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family:
            cls.family = cls
            _FAMILIES.setdefault(cls, {})
            return
        if cls.family is None:
            raise TypeError(f"{cls.__name__} must derive from one of the base classes {sorted(f.__name__ for f in _FAMILIES)}")
        if _is_abstract(cls) or (cls.__name__.startswith("_") and kind is None):
            return  # abstract bases and private helpers have no kind
        kind = kind if kind is not None else _snake_case(cls.__name__)
        if not _KIND_RE.match(kind):
            raise ValueError(f"kind {kind!r} of {cls.__qualname__} must be lower-case letters, digits, '_' or '-'")
        cls.kind = kind
        base_spec = cls.Spec
        cls.Spec = create_model(  # type: ignore[call-overload]
            f"{cls.__name__}Spec",
            __base__=base_spec,
            __module__=cls.__module__,
            kind=(Literal[kind], kind),  # type: ignore[valid-type]
        )
        cls.Spec.__doc__ = base_spec.__doc__ or f"Spec of :class:`{cls.__qualname__}`."
        _SPEC_OWNER[cls.Spec] = cls
        if not register:
            return
        table = _FAMILIES[cls.family]
        previous = table.get(kind)
        if previous is not None and (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"kind {kind!r} is already registered for {cls.family.__name__} by "
                f"{previous.__module__}.{previous.__qualname__}; pass kind=... to choose another"
            )
        table[kind] = cls

    def __init__(self, spec: Spec | dict[str, Any] | None = None, /, **fields: Any) -> None:
        super().__init__()
        spec_cls = type(self).Spec
        if spec is None:
            spec = spec_cls(**fields)
        elif fields:
            raise TypeError(f"{type(self).__name__}: pass either a spec or keyword fields, not both")
        elif isinstance(spec, dict):
            spec = spec_cls.model_validate(spec)
        elif not isinstance(spec, spec_cls):
            raise TypeError(f"{type(self).__name__} expects a {spec_cls.__name__}, got {type(spec).__name__}")
        self.spec = spec

    @classmethod
    def examples(cls) -> list[Spec]:
        """Specs of typical instances, used by the registry-wide property tests.

        Defaults to ``[cls.Spec()]``; a class whose spec has required fields overrides this."""
        try:
            return [cls.Spec()]
        except Exception as err:
            raise TypeError(f"{cls.__qualname__}: its Spec has required fields, so define examples()") from err

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec if k != "kind")

    def __repr__(self) -> str:
        if hasattr(type(self), "_modules"):  # nn.Module prints its own tree
            return super().__repr__()
        return f"{type(self).__name__}({self.extra_repr()})"


def families() -> list[type]:
    """The abstract base classes that own a registry."""
    return list(_FAMILIES)


def registry(base: type | None = None) -> dict[str, type]:
    """``{kind: class}`` of the registered concrete subclasses of ``base`` (all families if None).

    This function is what ``geodiffusion.registry`` names; the module that defines it is reached with
    ``from geodiffusion.registry import ...`` or ``importlib.import_module("geodiffusion.registry")``.
    """
    if base is None:
        return {k: c for table in _FAMILIES.values() for k, c in table.items()}
    if getattr(base, "family", None) not in _FAMILIES:
        raise ValueError(f"{base.__name__} is not a component base class")
    return {k: c for k, c in _FAMILIES[base.family].items() if issubclass(c, base)}


def unregister(cls: type) -> None:
    """Remove a class from its family's registry (for tests and notebooks)."""
    table = _FAMILIES[cls.family]
    if table.get(cls.kind) is cls:
        del table[cls.kind]


def _lookup(kind: str, base: type | None) -> type:
    candidates = [
        table[kind] for fam, table in _FAMILIES.items() if kind in table and (base is None or issubclass(table[kind], base))
    ]
    if not candidates:
        scope = base.__name__ if base is not None else "any family"
        known = sorted(registry(base)) if base is not None else sorted(registry())
        raise ValueError(f"unknown kind {kind!r} for {scope}; registered kinds: {known}")
    if len(candidates) > 1:
        names = [c.family.__name__ for c in candidates]
        raise ValueError(f"kind {kind!r} exists in several families {names}; pass base=... to build()")
    return candidates[0]


def spec_owner(spec_cls: type) -> type | None:
    """The component class whose ``Spec`` is ``spec_cls`` (registered or not), or None."""
    return _SPEC_OWNER.get(spec_cls)


def spec_class_for(kind: str, base: type | None = None) -> type[Spec]:
    """The Spec class of the registered class ``kind``."""
    return _lookup(kind, base).Spec


def build(spec: Spec | dict[str, Any] | str, base: type[C] | None = None) -> C:
    """Build a registered component from a Spec, a dict with ``kind``, or its JSON.

    >>> import geodiffusion as gd
    >>> gd.build({"kind": "cyclic", "n": 4}).order
    4
    """
    if isinstance(spec, Spec):
        owner = _SPEC_OWNER.get(type(spec))
        if owner is None:
            raise TypeError(f"{type(spec).__name__} is not the Spec of a registered class")
        return owner(spec)
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        raise TypeError(f"build() takes a Spec, a dict or a JSON string, got {type(spec).__name__}")
    if "kind" not in spec:
        raise ValueError("a spec dict needs a 'kind' field naming a registered class")
    cls = _lookup(spec["kind"], base)
    return cls(cls.Spec.model_validate(spec))
