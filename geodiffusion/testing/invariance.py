r"""Invariance conditions of a forward SDE under a group of linear isometries (SPDM, Lu et al., 2024).

For :math:`dX_t = f(X_t, t)\,dt + G(t)\,dW_t` on :math:`\mathbb{R}^d`, a group acting by linear isometries
:math:`x \mapsto A_g x`, and a :math:`G`-invariant initial law :math:`p_0`:

* **necessary and sufficient** (Prop. 1): the marginals :math:`p_t` stay :math:`G`-invariant for all
  :math:`t` iff, for every :math:`g`, the defect of the probability-flow (ODE) drift
  :math:`\tilde f = f - \tfrac12 G G^\top \nabla \log p_t`,
  :math:`v_g(x) = A_g^\top \tilde f(A_g x, t) - \tilde f(x, t)`, lies in :math:`[0]_{p_t}`, the drifts that
  leave :math:`p_t` unchanged: :math:`\nabla \cdot (p_t v_g) = 0`, i.e.
  :math:`\nabla \cdot v_g + v_g \cdot \nabla \log p_t = 0`;
* **sufficient** (pointwise): :math:`f(A_g x, t) = A_g f(x, t)` and
  :math:`G G^\top(A_g x, t) = A_g\, G G^\top(x, t)\, A_g^\top`.

:math:`p_0` is a uniform mixture of point masses on ``x0``, closed under the group, so that
:math:`p_t(x) = \frac1m \sum_j p_{t|0}(x \mid x_0^{(j)})` comes exactly from the process's own
``marginal`` (which :func:`~geodiffusion.testing.check_process` verifies against its drift and diffusion).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.processes.base import Process
from geodiffusion.testing.checks import CheckError, _err, _gen, _raise_if_exceeds
from geodiffusion.testing.tolerances import tolerance

__all__ = ["invariance_condition_errors", "check_invariance_conditions"]

NS = "ODE drift defect in [0]_{p_t}: div(p_t v_g) = 0 (necessary and sufficient)"
MARGINAL = "marginal invariance p_t(g x) = p_t(x)"
DRIFT = "drift equivariance f(g x, t) = g f(x, t) (sufficient)"
DIFFUSION = "diffusion G G^T = g G G^T g^T (sufficient)"


def _test_elements(group: Group, n: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    if group.finite and group.order <= 64:
        return group.elements()
    return group.sample(n, gen, dtype=dtype)


def _support(group: Group, x0: Tensor | None, n_support: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Rows of ``x0`` closed under the group: the orbit for finite groups; for others, checked invariant."""
    nd = group.event_ndim
    if x0 is None:
        points = group.random_points(n_support, gen, dtype=dtype)
        if not group.finite:
            # the only finite orbits of an infinite group of isometries here are fixed points: the origin
            return torch.zeros_like(points[:1])
        x0 = points
    x0 = x0.to(dtype)
    if group.finite:
        elements = group.elements()
        g = elements.reshape((elements.shape[0],) + (1,) * (x0.dim() - nd) + tuple(group.element_shape))
        orbit = group.act(g, x0.unsqueeze(0))
        return orbit.reshape((-1,) + tuple(x0.shape[x0.dim() - nd :]))
    flat = x0.reshape(x0.shape[0], -1).to(torch.float64)
    for g in group.sample(4, gen, dtype=dtype):
        moved = group.act(g, x0).reshape(x0.shape[0], -1).to(torch.float64)
        if float(torch.cdist(moved, flat).min(-1).values.max()) > 1e-6 * (1 + float(flat.abs().max())):
            raise ValueError("x0: the initial law must be invariant, but g . x0 is not a permutation of x0's rows")
    return x0


def _check_isometry(group: Group, elements: Tensor, like: Tensor) -> None:
    """The theorem is stated for linear isometries: fail before work otherwise."""
    if not group.linear_action:
        raise ValueError(f"{group!r} acts affinely; the invariance conditions are stated for linear isometries A_g x")
    gen = _gen(12345)
    u = torch.randn(like.shape, generator=gen, dtype=torch.float64).to(like.dtype)
    for g in elements:
        moved = group.act(g, u)
        if _err(moved.flatten(1).norm(dim=-1), u.flatten(1).norm(dim=-1)) > tolerance(like.dtype, "exact"):
            raise ValueError(f"{group!r} does not act by isometries |g x| = |x|; the conditions need an orthogonal action")


def invariance_condition_errors(
    process: Process,
    group: Group,
    *,
    x0: Tensor | None = None,
    times: tuple[float, ...] = (0.05, 0.3, 0.8),
    n: int = 6,
    n_support: int = 2,
    n_elements: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    r"""Worst violation, over elements :math:`g` and times ``times`` (fractions of :math:`T`), of:

    * the necessary-and-sufficient condition, :math:`\max|\nabla\cdot v_g + v_g\cdot\nabla\log p_t|`
      at :math:`x \sim p_t`, relative to the size :math:`|\nabla\cdot\tilde f| + |\tilde f\cdot\nabla\log p_t|`
      of the process's own transport term;
    * its conclusion, :math:`\log p_t(A_g x) = \log p_t(x)`;
    * the sufficient conditions on the drift and on the diffusion tensor :math:`G G^\top`.

    ``x0`` (``[m, *event]``) are the atoms of :math:`p_0`; for a finite group they are replaced by their
    orbit, otherwise they must already be invariant (default: random points' orbit, or the origin).
    """
    if getattr(process, "manifold", None) is not None:
        raise ValueError(f"{process!r} lives on a manifold; these conditions are stated on R^d")
    nd, pnd = group.event_ndim, process.event_ndim
    if pnd > nd:
        raise ValueError(f"process.event_ndim ({pnd}) exceeds the group's event_ndim ({nd}); a sample must be one point")
    gen = _gen(seed)
    support = _support(group, x0, n_support, gen, dtype)
    elements = _test_elements(group, n_elements, gen, dtype)
    _check_isometry(group, elements, support[:1])
    inverses = group.inverse(elements)
    k = elements.shape[0]
    g_b = elements.reshape((k, 1) + tuple(group.element_shape))  # broadcast over the points
    ginv_b = inverses.reshape((k, 1) + tuple(group.element_shape))
    m, T = support.shape[0], process.T
    event = tuple(support.shape[1:])
    worst = dict.fromkeys((NS, MARGINAL, DRIFT, DIFFUSION), 0.0)
    for frac in times:
        t = frac * T

        def log_p(y: Tensor, t: float = t) -> Tensor:
            """:math:`\\log p_t(y)` of the mixture, ``y [..., *event]`` -> ``[...]``."""
            lp = process.marginal(support, t).log_prob(y.unsqueeze(y.dim() - nd))
            rest = lp.dim() - (y.dim() - nd + 1)  # event axes the process treats as a batch
            lp = lp.flatten(lp.dim() - rest).sum(-1) if rest else lp
            return torch.logsumexp(lp, -1) - math.log(m)

        which = torch.randint(m, (n,), generator=gen)
        x = process.marginal(support[which], t).sample(gen).detach()
        d_t = process.diffusion(process.time_like(t, x)) ** 2  # G G^T = diag(g(t)^2), broadcast against x

        # stack K = |elements| + 1 independent copies of x: rows < k carry v_g, the last row f~ itself
        y = x.unsqueeze(0).repeat((k + 1,) + (1,) * x.dim()).requires_grad_(True)
        with torch.enable_grad():

            def score(z: Tensor) -> Tensor:
                (grad,) = torch.autograd.grad(log_p(z).sum(), z, create_graph=True)
                return grad

            def ode_drift(z: Tensor, t: float = t, d_t: Tensor = d_t) -> Tensor:
                return process.drift(z, t) - 0.5 * d_t * score(z)

            y_g, y_f = y[:k], y[k:]
            gy = group.act(g_b, y_g)
            v = group.act_on_vectors(ginv_b, ode_drift(gy)) - ode_drift(y_g)
            field = torch.cat([v, ode_drift(y_f)], 0)  # [K, n, *event]
            s_y = score(y)
            flat_field = field.flatten(2)
            div = torch.zeros(flat_field.shape[:2], dtype=dtype)
            for i in range(flat_field.shape[-1]):
                (second,) = torch.autograd.grad(flat_field[..., i].sum(), y, retain_graph=True)
                div = div + second.flatten(2)[..., i]
            transport = (field * s_y).flatten(2).sum(-1)
        residual = (div[:k] + transport[:k]).detach()
        scale = (div[k:].abs() + transport[k:].abs()).detach().to(torch.float64).max()
        ns = float(residual.to(torch.float64).abs().max() / scale.clamp_min(torch.finfo(torch.float64).tiny))
        worst[NS] = max(worst[NS], ns)

        with torch.no_grad():
            worst[MARGINAL] = max(worst[MARGINAL], _err(log_p(group.act(g_b, x)), log_p(x).expand(k, n)))
            f_x = process.drift(x, t)
            worst[DRIFT] = max(worst[DRIFT], _err(process.drift(group.act(g_b, x), t), group.act_on_vectors(g_b, f_x)))
            u = torch.randn((k, 1) + event, generator=gen, dtype=dtype)
            d_full = d_t.expand(x.shape)[:1]
            worst[DIFFUSION] = max(
                worst[DIFFUSION], _err(group.act_on_vectors(g_b, d_full * group.act_on_vectors(ginv_b, u)), d_full * u)
            )
    return worst


def check_invariance_conditions(
    process: Process, group: Group, *, sufficient: bool = False, dtype: torch.dtype = torch.float64, **kwargs
) -> None:
    r"""Raise :class:`~geodiffusion.testing.CheckError` unless the process keeps a :math:`G`-invariant
    initial law invariant: the necessary-and-sufficient condition (Prop. 1) and its conclusion
    :math:`p_t(A_g x) = p_t(x)` hold; with ``sufficient=True`` also the pointwise conditions
    :math:`f(A_g x, t) = A_g f(x, t)` and :math:`G G^\top = A_g G G^\top A_g^\top`.
    Keywords are those of :func:`invariance_condition_errors`."""
    errors = invariance_condition_errors(process, group, dtype=dtype, **kwargs)
    limits = {NS: tolerance(dtype, "pde"), MARGINAL: tolerance(dtype, "autograd")}
    if sufficient:
        limits |= {DRIFT: tolerance(dtype, "equivariance"), DIFFUSION: tolerance(dtype, "equivariance")}
    checked = {key: errors[key] for key in limits}
    try:
        _raise_if_exceeds(process, checked, limits)
    except CheckError as err:
        raise CheckError(f"{err} under {group!r}") from None
