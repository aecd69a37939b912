"""Specs, self-registration and build(): a user's class is a first-class citizen."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.registry import families
from geodiffusion.testing import CheckError, check_group

USER_MODULE = textwrap.dedent(
    '''
    import torch
    from pydantic import Field
    import geodiffusion as gd


    class Reflections(gd.FiniteGroup):
        """Z_2 acting on R^d by x -> -x."""

        class Spec(gd.Spec):
            dim: int = Field(2, ge=1)

        order = 2
        element_shape = ()
        event_ndim = 1

        def identity(self, batch_shape=(), *, device=None, dtype=None):
            return torch.zeros(batch_shape, dtype=torch.long, device=device)

        def compose(self, g, h):
            return (g + h) % 2

        def inverse(self, g):
            return g

        def elements(self, *, device=None):
            return torch.arange(2, device=device)

        def act(self, g, x):
            return x * (1 - 2 * g).to(x.dtype).unsqueeze(-1)

        def random_points(self, n, generator=None, *, dtype=torch.float32):
            return torch.randn((n, self.spec.dim), generator=generator, dtype=dtype)


    class BrokenReflections(Reflections, kind="broken_reflections"):
        def act(self, g, x):
            return x * (1 - 3 * g).to(x.dtype).unsqueeze(-1)
    '''
)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_symmetries.py"
    path.write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location("my_symmetries", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_symmetries"] = module
    spec.loader.exec_module(module)
    yield module
    gd.unregister(module.Reflections)
    gd.unregister(module.BrokenReflections)
    del sys.modules["my_symmetries"]


def test_user_group_registers_builds_and_passes_checks(user_module):
    assert gd.registry(gd.Group)["reflections"] is user_module.Reflections
    group = gd.build({"kind": "reflections", "dim": 3})
    assert isinstance(group, user_module.Reflections) and group.spec.dim == 3
    check_group(group)
    check_group(group, dtype=torch.float32)


def test_broken_user_group_fails_check(user_module):
    with pytest.raises(CheckError, match="homomorphism"):
        check_group(gd.build({"kind": "broken_reflections"}))


def test_user_spec_is_validated_before_construction(user_module):
    with pytest.raises(ValidationError, match="dim"):
        gd.build({"kind": "reflections", "dim": 0})


def test_kind_defaults_to_snake_case_and_can_be_overridden():
    assert gd.TimeMLP.kind == "mlp"
    from geodiffusion.registry import _snake_case

    assert _snake_case("SetTransformer") == "set_transformer"
    assert _snake_case("VPProcess") == "vp_process"
    assert _snake_case("SO3Group") == "so3_group"


def test_duplicate_kind_raises():
    with pytest.raises(ValueError, match="already registered"):

        class AnotherCyclic(gd.CyclicGroup, kind="cyclic"):
            pass


def test_register_false_keeps_class_out_of_registry():
    class Shadow(gd.CyclicGroup, kind="shadow_cyclic", register=False):
        pass

    assert "shadow_cyclic" not in gd.registry(gd.Group)
    assert gd.build(Shadow.Spec(n=3)).order == 3  # still buildable from its own Spec


def test_abstract_and_private_classes_are_not_registered():
    for family in families():
        for kind, cls in gd.registry(family).items():
            assert not cls.__name__.startswith("_")
            assert not getattr(cls, "__abstractmethods__", None), kind


def test_invalid_kind_name_raises():
    with pytest.raises(ValueError, match="lower-case"):

        class Bad(gd.CyclicGroup, kind="Bad Kind"):
            pass


def test_registry_filters_by_base_class():
    finite = gd.registry(gd.FiniteGroup)
    assert set(finite) == {"cyclic", "dihedral", "permutation"}
    assert set(finite) < set(gd.registry(gd.Group))
    with pytest.raises(ValueError, match="not a component base class"):
        gd.registry(int)


def test_build_errors_are_clear():
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        gd.build({"kind": "nope"})
    with pytest.raises(ValueError, match="'kind'"):
        gd.build({"n": 3})
    with pytest.raises(TypeError, match="Spec, a dict or a JSON"):
        gd.build(3)
    with pytest.raises(ValidationError, match="n"):
        gd.build({"kind": "cyclic", "n": 0})
    with pytest.raises(ValidationError, match="action"):
        gd.build({"kind": "cyclic", "n": 3, "action": "image"})  # rot90 realises only n in (1, 2, 4)


def test_ambiguous_kind_needs_a_base():
    class EuclideanAsKernel(gd.SquaredExponential, kind="euclidean"):
        pass

    try:
        with pytest.raises(ValueError, match="several families"):
            gd.build({"kind": "euclidean", "dim": 2})
        assert isinstance(gd.build({"kind": "euclidean", "dim": 2}, gd.Manifold), gd.Euclidean)
    finally:
        gd.unregister(EuclideanAsKernel)


def test_constructor_takes_spec_dict_or_fields_but_not_both():
    a = gd.CyclicGroup(n=4)
    b = gd.CyclicGroup(gd.CyclicGroup.Spec(n=4))
    c = gd.CyclicGroup({"n": 4})
    assert a.spec == b.spec == c.spec
    with pytest.raises(TypeError, match="not both"):
        gd.CyclicGroup(gd.CyclicGroup.Spec(n=4), n=5)
    with pytest.raises(TypeError, match="expects a CyclicGroupSpec"):
        gd.CyclicGroup(gd.DihedralGroup.Spec(n=4))


def test_specs_are_frozen():
    spec = gd.VPProcess.Spec()
    with pytest.raises(ValidationError):
        spec.beta_max = 3.0


def test_nested_specs_validate_and_serialise_fully():
    spec = gd.FrameAveraged.Spec(model={"kind": "mlp", "dim": 2}, group={"kind": "cyclic", "n": 3})
    dumped = json.loads(spec.model_dump_json())
    assert dumped["model"]["hidden"] == 128 and dumped["group"]["n"] == 3
    with pytest.raises(ValidationError, match="hidden"):
        gd.FrameAveraged.Spec(model={"kind": "mlp", "dim": 2, "hidden": -1}, group={"kind": "cyclic", "n": 3})
    with pytest.raises(ValidationError, match="unknown kind"):
        gd.FrameAveraged.Spec(model={"kind": "cyclic", "n": 2}, group={"kind": "cyclic", "n": 3})


def test_load_spec_file_reads_json_and_yaml(tmp_path):
    from geodiffusion.spec import load_spec_file

    (tmp_path / "a.json").write_text('{"kind": "vp", "beta_max": 10}')
    (tmp_path / "b.yaml").write_text("kind: vp\nbeta_max: 10\n")
    assert gd.build(load_spec_file(str(tmp_path / "a.json"))).spec == gd.build(load_spec_file(str(tmp_path / "b.yaml"))).spec
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_spec_file(str(tmp_path / "c.json"))


def test_the_name_registry_is_the_function_and_the_module_is_reachable():
    module = importlib.import_module("geodiffusion.registry")  # attribute access would give the function
    assert callable(gd.registry) and module.registry is gd.registry and module.build is gd.build
