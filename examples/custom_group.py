"""Define your own symmetry: a group, an equivariant kernel and an equivariant score model.

The group C_n of rotations of R^3 about the z axis does not ship with
geodiffusion. This script adds it from user code, exactly as a built-in group is
written: subclass ``FiniteGroup`` and a ``Kernel``, give each a pydantic spec,
then build them from plain dicts, list them in the registry, run the property
checks of ``geodiffusion.testing`` on them, frame-average a score network over
the new group, and show that ``check_group`` catches a deliberately broken group.

Run it with ``python examples/custom_group.py``; it exits non-zero if any step
fails. The documentation page "Define your own symmetry" shows this file.
"""

from __future__ import annotations

import math

import pydantic
import torch
from hypothesis import given, settings
from pydantic import Field
from torch import Tensor

import geodiffusion as gd
from geodiffusion import FiniteGroup, Group, Kernel
from geodiffusion.testing import (
    CheckError,
    check_equivariant,
    check_group,
    check_kernel,
    equivariance_errors,
    group_errors,
    strategies,
)


def z_rotation(angle: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` by ``angle`` (``[...]``) about the z axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rows = [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1), torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, -2)


class ZRotations(FiniteGroup, kind="z_rotations"):
    r"""The cyclic group :math:`C_n` acting on :math:`\mathbb{R}^3` by rotations about the z axis.

    An element is an integer :math:`k \in \{0, \dots, n-1\}` (a long tensor of shape ``[]``);
    it acts on vectors ``[..., 3]`` by :math:`R_z(2\pi k / n)`.
    """

    class Spec(gd.Spec):
        """The n rotations of R^3 about the z axis by multiples of 2*pi/n."""

        n: int = Field(ge=1, description="number of rotations; the smallest angle is 2*pi/n")

    @classmethod
    def examples(cls) -> list[gd.Spec]:
        # the spec has a required field, so say which instances property tests should use
        return [cls.Spec(n=1), cls.Spec(n=4), cls.Spec(n=7)]

    @property
    def order(self) -> int:
        return self.spec.n

    @property
    def element_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def event_ndim(self) -> int:
        return 1

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_shape, dtype=torch.long, device=device)

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return (g + h) % self.spec.n

    def inverse(self, g: Tensor) -> Tensor:
        return (-g) % self.spec.n

    def elements(self, *, device=None) -> Tensor:
        return torch.arange(self.spec.n, device=device)

    def matrix(self, g: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """The rotation matrix :math:`R_z(2\\pi g / n)` of each element, ``[..., 3, 3]``."""
        return z_rotation(g.to(dtype) * (2 * math.pi / self.spec.n))

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != 3:
            raise ValueError(f"ZRotations acts on vectors [..., 3], got shape {list(x.shape)}")
        return (self.matrix(g, x.dtype) @ x.unsqueeze(-1)).squeeze(-1)

    def random_points(self, n: int, generator=None, *, dtype=torch.float32) -> Tensor:
        return torch.randn((n, 3), generator=generator, dtype=dtype)


class AxialSquaredExponential(Kernel, kind="axial_squared_exponential"):
    r"""A matrix kernel on :math:`\mathbb{R}^3` that tells the z axis apart from the xy plane:

    .. math::
        k(x, x') = \exp\Big(-\frac{\|\Delta_{xy}\|^2}{2\ell_{xy}^2} - \frac{\Delta_z^2}{2\ell_z^2}\Big)
        \operatorname{diag}(\sigma_{xy}^2, \sigma_{xy}^2, \sigma_z^2),
        \qquad \Delta = x - x'.

    A rotation :math:`R` about z keeps :math:`\|\Delta_{xy}\|` and :math:`\Delta_z`, and commutes
    with the diagonal matrix, so :math:`k(Rx, Rx') = R\, k(x, x')\, R^\top`: the kernel is
    equivariant with output representation :math:`\rho(g) = R_z(g)` (vector-valued outputs
    rotate with the inputs). With :math:`\ell_{xy} \ne \ell_z` it is not invariant under all of
    SO(3), which ``check_kernel`` would catch if ``group`` claimed that.
    """

    class Spec(gd.Spec):
        """Axially symmetric squared-exponential kernel on R^3 with vector outputs."""

        group: gd.component_spec(Group) = Field(description="the z-rotation group the kernel is equivariant under")
        lengthscale_xy: float = Field(1.0, gt=0, description="lengthscale in the xy plane")
        lengthscale_z: float = Field(1.0, gt=0, description="lengthscale along z")
        variance_xy: float = Field(1.0, gt=0, description="variance of the x and y outputs")
        variance_z: float = Field(1.0, gt=0, description="variance of the z output")

    @classmethod
    def examples(cls) -> list[gd.Spec]:
        return [cls.Spec(group={"kind": "z_rotations", "n": 6}, lengthscale_z=3.0, variance_z=0.5)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        group = gd.build(self.spec.group, Group)  # the nested spec becomes a component
        if not isinstance(group, ZRotations):
            raise ValueError(f"AxialSquaredExponential is equivariant under z rotations, got {type(group).__name__}")
        self._group = group

    @property
    def input_dim(self) -> int:
        return 3

    @property
    def output_dim(self) -> int:
        return 3

    @property
    def group(self) -> ZRotations:
        return self._group

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        s = self.spec
        delta = x1.unsqueeze(-2) - x2.unsqueeze(-3)  # [..., n1, n2, 3]
        sq = (delta[..., :2] ** 2).sum(-1) / s.lengthscale_xy**2 + delta[..., 2] ** 2 / s.lengthscale_z**2
        scale = torch.tensor([s.variance_xy, s.variance_xy, s.variance_z], dtype=x1.dtype, device=x1.device)
        return torch.exp(-0.5 * sq)[..., None, None] * torch.diag(scale)

    def output_representation(self, g: Tensor) -> Tensor:
        return self._group.matrix(g)


class HalfAngleZRotations(ZRotations, register=False):
    """A buggy z-rotation group: it rotates by pi*k/n instead of 2*pi*k/n.

    Compose, inverse and identity are still those of C_n, but now k = n - 1
    followed by k = 1 rotates by pi, while their product k = 0 does nothing:
    the action is not a homomorphism. ``register=False`` keeps this test double
    out of the registry.
    """

    def matrix(self, g: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        return z_rotation(g.to(dtype) * (math.pi / self.spec.n))


def build_from_specs() -> tuple[ZRotations, AxialSquaredExponential]:
    """User classes are built from dicts, listed and validated like built-in ones."""
    group = gd.build({"kind": "z_rotations", "n": 4})
    kernel = gd.build(
        {"kind": "axial_squared_exponential", "group": {"kind": "z_rotations", "n": 4}, "lengthscale_z": 3.0, "variance_z": 0.5}
    )
    assert "z_rotations" in gd.registry(Group) and "axial_squared_exponential" in gd.registry(Kernel)
    assert "half_angle_z_rotations" not in gd.registry(Group)
    # a spec round-trips through JSON, nested group included
    assert gd.build(kernel.spec.model_dump_json()).spec == kernel.spec
    # bad input is rejected before any tensor is made, naming the field
    try:
        gd.build({"kind": "z_rotations", "n": 0})
    except pydantic.ValidationError as err:
        print(f"rejected n=0: {err.errors()[0]['loc']} {err.errors()[0]['msg']}")
    else:
        raise AssertionError("n=0 was accepted")
    print(f"built {group!r} and {kernel!r}")
    print(f"registered groups: {sorted(gd.registry(Group))}")
    return group, kernel


def run_property_checks(group: ZRotations, kernel: AxialSquaredExponential) -> None:
    """The checks the project runs on its own classes, in float64 and float32."""
    for dtype in (torch.float64, torch.float32):
        check_group(group, dtype=dtype)
        check_kernel(kernel, dtype=dtype)
    worst = max(group_errors(group).values())
    print(f"check_group and check_kernel passed; worst group-axiom error in float64: {worst:.1e}")


def search_with_hypothesis() -> None:
    """Hypothesis strategies search over seeds, elements and points of any group, yours included."""
    group = ZRotations(n=5)

    @settings(max_examples=25, deadline=None, database=None)
    @given(seed=strategies.seeds())
    def axioms_hold_for_every_seed(seed: int) -> None:
        check_group(group, seed=seed)

    @settings(max_examples=25, deadline=None, database=None)
    @given(g=strategies.group_elements(group), x=strategies.group_points(group))
    def rotations_keep_norm_and_height(g: Tensor, x: Tensor) -> None:
        y = group.act(g, x)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
        torch.testing.assert_close(y[..., 2], x[..., 2])

    axioms_hold_for_every_seed()
    rotations_keep_norm_and_height()
    print("hypothesis found no counterexample")


def check_frame_averaging(group: ZRotations) -> None:
    """Frame averaging makes any score network exactly equivariant under a finite group."""
    torch.manual_seed(0)
    net = gd.TimeMLP(dim=3, hidden=64, depth=2).double()
    model = gd.FrameAveraged.wrap(net, group)
    x = torch.randn(16, 3, dtype=torch.float64)
    t = torch.full((16,), 0.5, dtype=torch.float64)

    check_equivariant(lambda x: model(t, x), group, x, output="vector")
    averaged = max(equivariance_errors(lambda x: model(t, x), group, x).values())
    plain = max(equivariance_errors(lambda x: net(t, x), group, x).values())
    print(f"equivariance error: plain MLP {plain:.1e}, frame-averaged {averaged:.1e}")
    try:
        check_equivariant(lambda x: net(t, x), group, x, output="vector")
    except CheckError:
        print("check_equivariant rejects the plain MLP, as it should")
    else:
        raise AssertionError("check_equivariant accepted a non-equivariant network")


def show_broken_group_is_caught() -> None:
    """A check that cannot fail proves nothing: the broken group must be rejected."""
    broken = HalfAngleZRotations(n=4)
    try:
        check_group(broken)
    except CheckError as err:
        print(f"check_group caught the broken group:\n  {err}")
    else:
        raise AssertionError("check_group accepted a group whose action is not a homomorphism")


def main() -> None:
    group, kernel = build_from_specs()
    run_property_checks(group, kernel)
    search_with_hypothesis()
    check_frame_averaging(group)
    show_broken_group_is_caught()
    print("all steps passed")


if __name__ == "__main__":
    main()
