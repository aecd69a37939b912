"""Sphinx helpers that read the documentation off the code, so it cannot drift.

* Every concrete component's class docstring gains its ``kind`` and a table of
  its spec's fields (type, default, constraints, description), read from the
  pydantic model; the ``Spec``/``kind``/``family`` class attributes and the
  per-class ``examples()`` are then left out of the member lists (they are
  documented once, on ``Component``). Plain specs (``TrainingSpec``, ...) get
  the same table in place of pydantic's long signature.
* ``.. gd-abstract-members:: geodiffusion.Group`` lists the abstract members a
  subclass must provide, with the first line of each docstring.
* ``.. gd-registry::`` tabulates the registered kinds of every family.
* ``.. gd-program-output:: python examples/custom_group.py`` runs a command
  from the repository root while the page is built and shows what it printed
  (with ``:timed:``, also its wall time); a non-zero exit is a build error, so
  shown output is always real output.
"""

from __future__ import annotations

import importlib
import inspect
import shlex
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from geodiffusion.registry import Component, families, registry
from geodiffusion.spec import Spec


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def public_path(cls: type) -> str | None:
    """``geodiffusion.<subpackage>.<Name>``, where the API pages document ``cls``, if it is exported there."""
    package = ".".join(cls.__module__.split(".")[:2])
    module = importlib.import_module(package)
    return f"{package}.{cls.__name__}" if getattr(module, cls.__name__, None) is cls else None


def _ref(cls: type) -> str:
    path = public_path(cls)
    return f":class:`~{path}`" if path else f"``{cls.__qualname__}``"


def _nested_base(field) -> type | None | bool:
    """The family of a ``component_spec(base)`` field (None: any family), or False if not one."""
    for meta in field.metadata:
        func = getattr(meta, "func", None)
        if func is not None and func.__qualname__.startswith("component_spec."):
            return inspect.getclosurevars(func).nonlocals.get("base")
    return False


def _annotation_text(ann) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin is typing.Annotated:
        return _annotation_text(args[0])
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_annotation_text(a) for a in args)}]"
    return getattr(ann, "__name__", repr(ann))


def _type_text(field) -> str:
    base = _nested_base(field)
    if base is not False:
        return f"spec of a {_ref(base)}" if base is not None else "spec of any component"
    return f"``{_annotation_text(field.annotation)}``"


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "multiple of"}


def _constraints(field) -> str:
    out = []
    for meta in field.metadata:
        for attr, sym in _BOUNDS.items():
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sym} {value}")
    return ", ".join(out)


def spec_table(spec_cls) -> list[str]:
    """An rst list-table of the fields of a Spec class (``kind`` left out)."""
    rows = [(name, field) for name, field in spec_cls.model_fields.items() if name != "kind"]
    if not rows:
        return ["The spec has no fields besides ``kind``."]
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 15 25 15 15 30", ""]
    lines += ["   * - field", "     - type", "     - default", "     - constraint", "     - meaning"]
    for name, field in rows:
        default = "required" if field.is_required() else f"``{field.get_default(call_default_factory=True)!r}``"
        lines += [
            f"   * - ``{name}``",
            f"     - {_type_text(field)}",
            f"     - {default}",
            f"     - {_constraints(field)}",
            f"     - {field.description or ''}",
        ]
    return lines


def _is_concrete_component(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, Component) and bool(getattr(obj, "kind", ""))


def _is_spec(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, Spec) and obj is not Spec


def process_docstring(app, what, name, obj, options, lines) -> None:
    if what == "class" and _is_spec(obj):
        lines += ["", "**Fields**", ""] + spec_table(obj) + [""]
        return
    if what != "class" or not _is_concrete_component(obj):
        return
    family = obj.family.__name__
    registered = registry(obj.family).get(obj.kind) is obj
    lines += [
        "",
        f"**Kind** ``{obj.kind}`` ({family} family{'' if registered else ', not registered'}). "
        f"Built by ``geodiffusion.build({{'kind': {obj.kind!r}, ...}})`` or ``{obj.__name__}(**fields)``.",
    ]
    spec_doc = inspect.getdoc(obj.Spec)
    lines += ["", f"**Spec** ({spec_doc})" if spec_doc else "**Spec**", ""]
    lines += spec_table(obj.Spec)
    lines.append("")


def skip_member(app, what, name, obj, skip, options):
    if what == "class" and (name in ("Spec", "kind", "family", "examples") or name.startswith("model_")):
        return True  # component plumbing and pydantic's model_* machinery
    return None


def process_signature(app, what, name, obj, options, signature, return_annotation):
    if what == "class" and _is_spec(obj):
        return "(**fields)", None  # the fields are tabulated in the docstring
    return None


def _resolve(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)


class AbstractMembers(SphinxDirective):
    """Bullet list of the abstract members of a class, read from the class."""

    required_arguments = 1

    def run(self):
        cls = _resolve(self.arguments[0])
        names = sorted(
            (n for n in dir(cls) if getattr(getattr(cls, n, None), "__isabstractmethod__", False)),
            key=lambda n: _definition_order(cls, n),
        )
        lines = []
        for n in names:
            member = inspect.getattr_static(cls, n)
            fn = member.fget if isinstance(member, property) else member
            kind = "property " if isinstance(member, property) else ""
            sig = "" if isinstance(member, property) else _signature(fn)
            owner = next(c for c in cls.__mro__ if n in vars(c))
            role = "attr" if isinstance(member, property) else "meth"
            sig = f"\\ ``{sig}``" if sig else ""
            lines.append(f"* {kind}:{role}:`{n} <{public_path(owner)}.{n}>`{sig}: {_first_line(fn)}")
        return self.parse(lines)

    def parse(self, lines):
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, node)
        return node.children


def _definition_order(cls, name: str) -> tuple[int, int]:
    for depth, c in enumerate(reversed(cls.__mro__)):
        if name in vars(c):
            return depth, list(vars(c)).index(name)
    return 0, 0


def _signature(fn) -> str:
    """The call signature without ``self`` and without annotations."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in list(sig.parameters.values())[1:]]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


class RegistryTable(AbstractMembers):
    """Table of the registered kinds of every family at build time."""

    required_arguments = 0

    def run(self):
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 80", "", "   * - family", "     - kinds"]
        for family in families():
            kinds = ", ".join(f"``{k}`` ({_ref(c)})" for k, c in sorted(registry(family).items()))
            lines += [f"   * - {_ref(family)}", f"     - {kinds}"]
        return self.parse(lines)


class ProgramOutput(SphinxDirective):
    """Run a command (``python`` means this interpreter) from the repository root; show its output."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"timeout": int, "timed": directives.flag}

    def run(self):
        command = self.arguments[0]
        argv = [sys.executable if a == "python" else a for a in shlex.split(command)]
        root = Path(self.env.srcdir).parent
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=self.options.get("timeout", 300))
        except (OSError, subprocess.TimeoutExpired) as err:
            raise self.error(f"{command!r} could not run: {err}") from err
        elapsed = time.perf_counter() - start
        if proc.returncode:
            raise self.error(f"{command!r} exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        text = f"$ {command}\n{proc.stdout.rstrip()}"
        block = nodes.literal_block(text, text, language="text")
        if "timed" not in self.options:
            return [block]
        note = nodes.paragraph(text=f"(Run while this page was built: {elapsed:.1f} s of wall time.)")
        return [block, note]


def setup(app):
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-signature", process_signature)
    app.add_directive("gd-abstract-members", AbstractMembers)
    app.add_directive("gd-registry", RegistryTable)
    app.add_directive("gd-program-output", ProgramOutput)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
