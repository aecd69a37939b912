r"""Score networks over sets of :math:`(x, y)` pairs: finite marginals of a function :math:`y = f(x)`.

A function score network maps time :math:`t`, values ``y [B, N, d_out]`` and their inputs ``x [B, N, d_in]``
(context keyword ``inputs``, as :class:`~geodiffusion.processes.gp.OUGaussianProcess` and the conditional samplers
pass it) to an output ``[B, N, d_out]`` in the process's score parametrisation.

Called without ``inputs``, the state is the *graph* :math:`\{(x_i, y_i)\}` packed as ``[B, N, d_in + d_out]`` and
the output has the same layout with a zero input block (the inputs carry no noise, so the score of the graph's law
has no input component). This is what lets the generic contract (``check_equivariant(lambda z: model(t, z), ...)``)
test a joint action on inputs and values with a group acting on graphs, e.g. permutations of the points.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from geodiffusion._random import randn
from geodiffusion.groups.base import Group
from geodiffusion.groups.permutation import Permutations
from geodiffusion.manifolds.base import Manifold
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, mlp
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = [
    "FunctionScoreModel",
    "BiDimensionalAttention",
    "FunctionMLP",
    "TangentFunctionScore",
    "GPResidualScore",
    "FieldGraphGroup",
]


class FieldGraphGroup(Group, kind="field_graph"):
    r"""A group :math:`G` acting on graphs of fields ``[..., N, d_in + d_out]`` by
    :math:`g \cdot (x_i, y_i) = (g \cdot x_i, \rho(g) y_i)`: the inputs by the base group's point action, the values
    by its linear part (``output="vector"``, :math:`d_{out} = d_{in}`) or not at all (``output="invariant"``).
    Vectors attached to a graph (its scores) transform by the linear part in both blocks. Elements are the
    base group's."""

    class Spec(Spec):
        """Action of ``group`` (acting on point clouds [..., N, d_in]) on graphs of fields."""

        group: component_spec(Group) = Field(description="base group acting on point clouds [..., N, d_in]")
        output: Literal["vector", "invariant"] = Field("vector", description="how the values y transform")
        output_dim: int = Field(1, ge=1, description="d_out for invariant values (vector values have d_out = d_in)")

    @classmethod
    def examples(cls):
        return [
            cls.Spec(group={"kind": "e", "dim": 2}),
            cls.Spec(group={"kind": "so", "dim": 3, "action": "point_cloud"}),
            cls.Spec(group={"kind": "translation", "dim": 1, "action": "point_cloud"}, output="invariant", output_dim=2),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.base: Group = build(self.spec.group, Group)
        if self.base.event_ndim != 2 or not hasattr(self.base.spec, "dim"):
            raise ValueError(f"group: expected a group of R^d acting on point clouds [..., N, d], got {self.base!r}")
        self.input_dim = int(self.base.spec.dim)
        self.output_dim = self.input_dim if self.spec.output == "vector" else self.spec.output_dim

    linear_action = False  # the inputs may move affinely (translations); scores use act_on_vectors

    @property
    def element_shape(self) -> tuple[int, ...]:
        return self.base.element_shape

    @property
    def event_ndim(self) -> int:
        return 2

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return self.base.identity(batch_shape, device=device, dtype=dtype)

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return self.base.compose(g, h)

    def inverse(self, g: Tensor) -> Tensor:
        return self.base.inverse(g)

    def sample(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        return self.base.sample(n, generator, device=device, dtype=dtype)

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if z.dim() < 2 or z.shape[-1] != self.input_dim + self.output_dim:
            raise ValueError(
                f"FieldGraphGroup: expected graphs [..., N, {self.input_dim} + {self.output_dim}], got {list(z.shape)}"
            )
        return z[..., : self.input_dim], z[..., self.input_dim :]

    def _values(self, g: Tensor, y: Tensor, like: Tensor) -> Tensor:
        if self.spec.output == "vector":
            return self.base.act_on_vectors(g, y)
        return y.expand(like.shape[:-1] + y.shape[-1:])

    def act(self, g: Tensor, z: Tensor) -> Tensor:
        x, y = self._split(z)
        gx = self.base.act(g, x)
        return torch.cat([gx, self._values(g, y, gx)], -1)

    def act_on_vectors(self, g: Tensor, v: Tensor) -> Tensor:
        vx, vy = self._split(v)
        gvx = self.base.act_on_vectors(g, vx)
        return torch.cat([gvx, self._values(g, vy, gvx)], -1)

    def random_points(self, n, generator=None, *, dtype=torch.float32) -> Tensor:
        return torch.randn((n, 5, self.input_dim + self.output_dim), generator=generator, dtype=dtype)


class _FunctionSpec(Spec):
    input_dim: int = Field(1, ge=1, description="dimension d_in of the inputs x")
    output_dim: int = Field(1, ge=1, description="dimension d_out of the values y")
    n_points: int = Field(5, ge=1, description="points of the example input (and of the claimed group S_N)")


class FunctionScoreModel(ScoreModel):
    r""":math:`s_\theta(t, x, y)`: a score network over the finite marginal :math:`y = (f(x_1), \dots, f(x_N))`.

    Shapes: ``t [B]`` or ``[]``, ``x`` (values) ``[B, N, d_out]``, ``inputs [B, N, d_in]`` or ``[N, d_in]``
    :math:`\to` ``[B, N, d_out]``; without ``inputs``, ``x`` is the packed graph ``[B, N, d_in + d_out]`` and the
    output is ``[B, N, d_in + d_out]`` with zeros in the input block.
    """

    @abstractmethod
    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        r""":math:`s_\theta(t, x, y)` for ``t [B]``, ``inputs [B, N, d_in]``, ``values [B, N, d_out]``."""

    def forward(self, t: Tensor, x: Tensor, inputs: Tensor | None = None, **context: Any) -> Tensor:
        s = self.spec
        d_in, d_out = s.input_dim, s.output_dim
        packed = inputs is None
        if packed:
            if x.dim() != 3 or x.shape[-1] != d_in + d_out:
                raise ValueError(
                    f"{type(self).__name__}: without inputs, expected the graph [B, N, {d_in} + {d_out}], got {list(x.shape)}"
                )
            inputs, values = x[..., :d_in], x[..., d_in:]
        else:
            values = x
            if values.dim() != 3 or values.shape[-1] != d_out:
                raise ValueError(f"{type(self).__name__}: expected values [B, N, {d_out}], got {list(values.shape)}")
            if inputs.dim() == 2:
                inputs = inputs.unsqueeze(0)
            if inputs.dim() != 3 or inputs.shape[-1] != d_in or inputs.shape[-2] != values.shape[-2]:
                raise ValueError(
                    f"{type(self).__name__}: expected inputs [B, {values.shape[-2]}, {d_in}] or [{values.shape[-2]}, {d_in}], "
                    f"got {list(inputs.shape)}"
                )
            inputs = inputs.to(values.dtype).expand(values.shape[:2] + (d_in,))
        t = torch.as_tensor(t, device=values.device).to(values.dtype)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, values.shape[0])):
            raise ValueError(f"t: expected shape [] or [{values.shape[0]}], got {list(t.shape)}")
        out = self.score(t.expand(values.shape[0]), inputs, values)
        return torch.cat([torch.zeros_like(inputs), out], -1) if packed else out

    def example_input(self, batch: int, generator=None) -> Tensor:
        """A random packed graph ``[batch, n_points, d_in + d_out]``."""
        s = self.spec
        return randn((batch, s.n_points, s.input_dim + s.output_dim), generator)


class _BiDimensionalBlock(nn.Module):
    r"""One NDP block (Dutordoir et al., 2023): :math:`h = s + W_t \gamma(t)`, multi-head attention across the
    input dimensions (for each point) plus attention across the points (for each dimension), split into a
    residual and a skip stream, :math:`s \leftarrow (s + \mathrm{gelu}(r))/\sqrt2`. ``bias [B d heads, N, N]``, if
    given, is added to the logits of the attention across points."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.time = nn.Linear(hidden, hidden)
        self.across_dims = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.across_points = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.out = nn.Linear(hidden, 2 * hidden)

    def forward(self, s: Tensor, t_emb: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, n, d, h = s.shape
        z = s + self.time(t_emb)[:, None, None, :]
        rows = z.reshape(b * n, d, h)  # sequences over the input dimensions
        att_d = self.across_dims(rows, rows, rows, need_weights=False)[0].reshape(b, n, d, h)
        cols = z.transpose(1, 2).reshape(b * d, n, h)  # sequences over the points
        att_n = self.across_points(cols, cols, cols, attn_mask=bias, need_weights=False)[0]
        att_n = att_n.reshape(b, d, n, h).transpose(1, 2)
        residual, skip = self.out(att_d + att_n).chunk(2, -1)
        return (s + nn.functional.gelu(residual)) / math.sqrt(2.0), nn.functional.gelu(skip)


class BiDimensionalAttention(FunctionScoreModel, kind="bidim_attention"):
    r"""The bi-dimensional attention network of neural diffusion processes (Dutordoir et al., 2023), the score
    network of GeomNDP for scalar or vector-valued functions on :math:`\mathbb{R}^{d_{in}}`.

    Each point and input dimension :math:`k` gives a token :math:`\phi(x_{ik}, y_i) \in \mathbb{R}^H`; ``layers``
    blocks attend across points and across input dimensions; the skips are summed, averaged over the input
    dimensions and mapped to :math:`\mathbb{R}^{d_{out}}`. With no positional encoding,
    :math:`s_\theta(t, \sigma x, \sigma y) = \sigma s_\theta(t, x, y)` for every permutation :math:`\sigma` of the
    points, and the output is invariant to permutations of the input dimensions. With ``translation_invariant``
    the inputs are centred first, :math:`x_i \mapsto x_i - \bar x`, so that also
    :math:`s_\theta(t, x + b, y) = s_\theta(t, x, y)`: the symmetry of the score of a stationary GP's marginals
    (the claimed group is then the translations of the inputs, :class:`~geodiffusion.models.FieldGraphGroup`).
    With ``relative_bias`` every block's attention across points adds :math:`\beta_{\ell h}(x_{ik} - x_{jk})`, a
    learned function of the input differences per layer :math:`\ell` and head :math:`h`, to its logits: weights
    that can follow a stationary kernel's shape, as the score of a stationary GP's marginals needs
    (:math:`K \Sigma_t^{-1}` is a stationary smoother on the inputs). With ``relative_bias_frequencies`` = K its MLP
    reads :math:`[\Delta, \cos \omega_k \Delta, \sin \omega_k \Delta]_{k \le K}` of :math:`\Delta = x_{ik} - x_{jk}`, with learned
    :math:`\omega_k` (initially log-spaced in [1, 64]): a periodic kernel's weights repeat over many periods, which
    a small MLP of :math:`\Delta` alone does not draw.
    """

    class Spec(_FunctionSpec):
        """Bi-dimensional attention (NDP) score network over sets of (x, y) pairs."""

        hidden: int = Field(64, ge=1, description="token width H")
        heads: int = Field(4, ge=1, description="attention heads (must divide hidden)")
        layers: int = Field(4, ge=1, description="bi-dimensional attention blocks")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        translation_invariant: bool = Field(False, description="centre the inputs of each function: s(t, x + b, y) = s(t, x, y)")
        relative_bias: int = Field(
            0, ge=0, description="width of the MLP of x_i - x_j whose output biases the attention across points (0: none)"
        )
        relative_bias_frequencies: int = Field(
            0, ge=0, description="learned frequencies of the relative bias's Fourier features of x_i - x_j (0: none)"
        )

        @model_validator(mode="after")
        def _frequencies_need_a_bias(self):
            if self.relative_bias_frequencies and not self.relative_bias:
                raise ValueError("relative_bias_frequencies: needs relative_bias > 0 (the MLP that reads the features)")
            return self

    @classmethod
    def examples(cls):
        return [
            cls.Spec(hidden=8, heads=2, layers=2, n_points=4),
            cls.Spec(input_dim=2, output_dim=2, hidden=8, heads=2, layers=1),
            cls.Spec(hidden=8, heads=2, layers=1, n_points=4, translation_invariant=True),
            cls.Spec(hidden=8, heads=2, layers=2, n_points=4, relative_bias=8),
            cls.Spec(hidden=8, heads=2, layers=1, n_points=4, translation_invariant=True, relative_bias=4),
            cls.Spec(
                hidden=8, heads=2, layers=1, n_points=4, translation_invariant=True, relative_bias=4, relative_bias_frequencies=3
            ),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        if s.hidden % s.heads:
            raise ValueError(f"hidden ({s.hidden}) must be divisible by heads ({s.heads})")
        self.embed = nn.Linear(1 + s.output_dim, s.hidden)
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(s.time_embedding_dim), nn.Linear(s.time_embedding_dim, s.hidden), nn.GELU()
        )
        self.blocks = nn.ModuleList(_BiDimensionalBlock(s.hidden, s.heads) for _ in range(s.layers))
        self.head = nn.Sequential(nn.Linear(s.hidden, s.hidden), nn.GELU(), nn.Linear(s.hidden, s.output_dim))
        k = s.relative_bias_frequencies
        self.pair_bias = mlp(1 + 2 * k, s.relative_bias, 2, s.layers * s.heads, "gelu") if s.relative_bias else None
        self.pair_frequencies = nn.Parameter(torch.exp(torch.linspace(0.0, math.log(64.0), k))) if k else None
        if s.translation_invariant:
            translations = {"kind": "translation", "dim": s.input_dim, "action": "point_cloud"}
            self._group: Group = FieldGraphGroup(group=translations, output="invariant", output_dim=s.output_dim)
        else:
            self._group = Permutations(n=s.n_points, feature_ndim=1)

    @property
    def group(self) -> Group:
        return self._group

    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        b, n, d = inputs.shape
        if self.spec.translation_invariant:
            inputs = inputs - inputs.mean(1, keepdim=True)
        tokens = torch.cat([inputs.unsqueeze(-1), values.unsqueeze(2).expand(b, n, d, values.shape[-1])], -1)
        s = self.embed(tokens)
        t_emb = self.time_embedding(t)
        biases = [None] * len(self.blocks)
        if self.pair_bias is not None:
            heads = self.spec.heads
            diff = (inputs.unsqueeze(2) - inputs.unsqueeze(1)).permute(0, 3, 1, 2)  # [b, d, n, n]: x_ik - x_jk
            features = diff.unsqueeze(-1)
            if self.pair_frequencies is not None:
                angles = features * self.pair_frequencies
                features = torch.cat([features, torch.cos(angles), torch.sin(angles)], -1)
            bias = self.pair_bias(features)  # [b, d, n, n, layers * heads]
            # attention's float mask is [batch * heads, n, n], batch-major over the (b, d) sequences
            bias = bias.reshape(b, d, n, n, len(self.blocks), heads).permute(4, 0, 1, 5, 2, 3)
            biases = list(bias.reshape(len(self.blocks), b * d * heads, n, n))
        skips = torch.zeros_like(s)
        for block, bias in zip(self.blocks, biases, strict=True):
            s, skip = block(s, t_emb, bias)
            skips = skips + skip
        # the mean over input dimensions makes the output invariant to their order
        return self.head(skips.mean(2) / math.sqrt(len(self.blocks)))


class FunctionMLP(FunctionScoreModel, kind="function_mlp"):
    r"""The non-equivariant baseline: an MLP on the concatenated points,
    :math:`s_\theta = \mathrm{MLP}([x_1, y_1, 1, \dots, x_N, y_N, 1, 0, \dots, 0, \gamma(t)])`, zero-padded to
    ``max_points`` (the trailing 1 marks a real point), the first :math:`N` outputs returned.
    It depends on the order of the points and claims no symmetry.
    """

    class Spec(_FunctionSpec):
        """MLP over concatenated (x, y) points, padded to max_points."""

        max_points: int = Field(64, ge=1, description="largest number of points N")
        hidden: int = Field(256, ge=1, description="width of hidden layers")
        depth: int = Field(3, ge=1, description="number of hidden layers")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = "silu"

    @classmethod
    def examples(cls):
        return [cls.Spec(max_points=6, hidden=16, depth=2, n_points=4)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        width = s.max_points * (s.input_dim + s.output_dim + 1) + s.time_embedding_dim
        self.net = mlp(width, s.hidden, s.depth, s.max_points * s.output_dim, s.activation)

    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        s = self.spec
        b, n, _ = values.shape
        if n > s.max_points:
            raise ValueError(f"FunctionMLP: {n} points exceed max_points={s.max_points}")
        points = torch.cat([inputs, values, torch.ones_like(values[..., :1])], -1)
        points = nn.functional.pad(points, (0, 0, 0, s.max_points - n))
        out = self.net(torch.cat([points.flatten(1), self.time_embedding(t).to(values.dtype)], -1))
        return out.reshape(b, s.max_points, s.output_dim)[:, :n]


class TangentFunctionScore(FunctionScoreModel, kind="tangent_function"):
    r"""Score network of functions with values on a manifold :math:`M \subset \mathbb{R}^{d_{out}}` (GeomNDP,
    Sec. 3.4), noised by Brownian motion on :math:`M` at every point:
    :math:`s_\theta(t, x, y)_i = P_{y_i}\, o_\theta(t, x, y)_i / \sigma_t \in T_{y_i} M`, with :math:`o_\theta` a
    function network on ambient values (``network``) and :math:`\sigma_t` the process's ``sigma(t)`` (none: 1).

    The projection acts pointwise, so the network's permutation equivariance carries over; the values of the
    example input lie on :math:`M`.
    """

    class Spec(_FunctionSpec):
        """A function network projected onto the tangent spaces of the values' manifold."""

        manifold: component_spec(Manifold) = Field(description="the codomain M (points [..., d_out])")
        network: component_spec(ScoreModel) = Field(description="a function score network on ambient values")
        process: component_spec(Process) | None = Field(None, description="a process with sigma(t): divide by sigma_t")

    @classmethod
    def examples(cls):
        sphere = {"kind": "sphere", "dim": 2}
        net = {"kind": "bidim_attention", "output_dim": 3, "hidden": 8, "heads": 2, "layers": 1, "n_points": 4}
        process = {"kind": "brownian", "manifold": sphere}
        return [cls.Spec(output_dim=3, n_points=4, manifold=sphere, network=net, process=process)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.manifold = build(s.manifold, Manifold)
        self.network = build(s.network, ScoreModel)
        if tuple(self.manifold.point_shape) != (s.output_dim,):
            raise ValueError(f"manifold: expected points of shape [{s.output_dim}] (output_dim), got {self.manifold.point_shape}")
        if (getattr(self.network.spec, "input_dim", None), getattr(self.network.spec, "output_dim", None)) != (
            s.input_dim,
            s.output_dim,
        ):
            raise ValueError(f"network: expected a function network with input_dim={s.input_dim}, output_dim={s.output_dim}")
        self.process = build(s.process, Process) if s.process is not None else None
        if self.process is not None and not callable(getattr(self.process, "sigma", None)):
            raise ValueError(f"process: {type(self.process).__name__} has no sigma(t) to precondition by")

    @property
    def group(self) -> Group | None:
        return self.network.group

    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        out = self.manifold.proj(values, self.network(t, values, inputs=inputs))
        if self.process is not None:
            out = out / self.process.sigma(t).to(values.dtype).reshape(-1, 1, 1)
        return out

    def example_input(self, batch: int, generator=None) -> Tensor:
        s = self.spec
        values = self.manifold.random_point(batch * s.n_points, generator).reshape(batch, s.n_points, s.output_dim)
        return torch.cat([randn((batch, s.n_points, s.input_dim), generator).to(values.dtype), values], -1)


class GPResidualScore(FunctionScoreModel, kind="gp_residual"):
    r"""A function network rescaled by :math:`\sigma_t` and offset by the limit (the NDP / GeomNDP "std" and
    "residual" tricks) for an OU-to-GP process: :math:`o_\theta(t, x, y) = n_\theta(t, x, y)/\sigma_t + o_\pi(t, x, y)`,
    with :math:`o_\pi` the output for the limit's score (:meth:`OUGaussianProcess.limit_output`, :math:`-(y - m)`
    when K-preconditioned).

    The K-preconditioned DSM target :math:`-L\xi/\sigma_t` spans two orders of magnitude over :math:`t`; the network's
    share of it, :math:`-L\xi + \sigma_t (y_t - m)`, is :math:`O(1)` at every :math:`t`. At :math:`n_\theta = 0` the
    reverse SDE is the forward one started in its limit. The std trick needs ``plain`` or ``kernel_preconditioned``:
    an ``st_preconditioned`` target :math:`-\xi` is already :math:`O(1)`, and dividing by :math:`\sigma_t` would make
    the network's share :math:`O(\sigma_t)`; that pairing is refused. Under ``plain`` and ``kernel_preconditioned``,
    :math:`o_\pi` is equivariant wherever :math:`K` is and the group fixes the constant field :math:`m` (any
    :math:`m` for groups that move only the inputs, :math:`m = 0` for rotations of the values; checked at
    construction), so the network's group is the model's. Under ``st_preconditioned`` it is
    :math:`-\sigma_t L^{-1}(y - m)`, with :math:`L` the Cholesky factor, which depends on the order of the points:
    with the residual the model claims no group.
    """

    class Spec(_FunctionSpec):
        """A function network divided by sigma_t, plus the output for the score of the process's GP limit."""

        network: component_spec(ScoreModel) = Field(description="a function score network (the part n_theta)")
        process: component_spec(Process) = Field(description="the ou_gp process: its parametrisation, sigma_t and limit")
        std_scaling: bool = Field(True, description="divide the network by sigma_t (the std trick)")
        residual: bool = Field(True, description="add the output for the limit's score (the residual trick)")

    @classmethod
    def examples(cls):
        se = {"kind": "squared_exponential", "lengthscale": 0.5}
        kernel = {"kind": "kernel_sum", "kernels": [se, {"kind": "white_noise", "variance": 0.05}]}
        net = {"kind": "bidim_attention", "hidden": 8, "heads": 2, "layers": 1, "n_points": 4}
        plain = {"kind": "ou_gp", "kernel": kernel, "mean": 0.3, "parametrisation": "plain"}
        return [
            cls.Spec(n_points=4, network={**net, "translation_invariant": True}, process={"kind": "ou_gp", "kernel": kernel}),
            cls.Spec(n_points=4, network=net, process=plain),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        from geodiffusion.processes.gp import OUGaussianProcess  # the process module imports the models' registry

        super().__init__(spec, **fields)
        s = self.spec
        self.network = build(s.network, ScoreModel)
        if (getattr(self.network.spec, "input_dim", None), getattr(self.network.spec, "output_dim", None)) != (
            s.input_dim,
            s.output_dim,
        ):
            raise ValueError(f"network: expected a function network with input_dim={s.input_dim}, output_dim={s.output_dim}")
        self.process = build(s.process, Process)
        if not isinstance(self.process, OUGaussianProcess):
            raise ValueError(f"process: expected an ou_gp process, got {type(self.process).__name__}")
        if self.process.kernel.input_dim != s.input_dim or self.process.kernel.output_dim != s.output_dim:
            raise ValueError(
                f"process: its kernel maps R^{self.process.kernel.input_dim} to {self.process.kernel.output_dim}x"
                f"{self.process.kernel.output_dim} matrices; expected input_dim={s.input_dim}, output_dim={s.output_dim}"
            )
        if s.std_scaling and self.process.spec.parametrisation == "st_preconditioned":
            raise ValueError(
                "std_scaling: an st_preconditioned output (target -xi) is already O(1) in t; dividing the network by "
                "sigma_t would leave it an O(sigma_t) target. Set std_scaling=False or use kernel_preconditioned/plain"
            )
        if s.residual and self.process.spec.mean != 0 and self.group is not None:
            self._check_mean_is_fixed_by_group()

    def _check_mean_is_fixed_by_group(self) -> None:
        # o_pi = -(y - m) commutes with the action only if every g maps the constant field m to itself (a field the
        # network's own group acts on: its example input with the values set to m)
        s, m = self.spec, self.process.spec.mean
        gen = torch.Generator().manual_seed(0)
        field = self.network.example_input(4, gen).to(torch.float64)
        field[..., s.input_dim :] = m
        moved = self.group.act(self.group.sample(4, gen, dtype=torch.float64), field)[..., s.input_dim :]
        if not torch.allclose(moved, torch.full_like(moved, m), atol=1e-9):
            raise ValueError(
                f"process.mean: the residual output -(y - m) is equivariant only if the group fixes the constant "
                f"field m = {m}, which {self.group!r} moves (so the limit N(m, K) is not invariant under it either); "
                "set mean = 0"
            )

    @property
    def group(self) -> Group | None:
        if self.spec.residual and self.process.spec.parametrisation == "st_preconditioned":
            return None  # -sigma_t L^{-1}(y - m) depends on the Cholesky factor's ordering of the points
        return self.network.group

    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        s = self.spec
        out = self.network(t, values, inputs=inputs)
        if s.std_scaling:
            sigma = self.process.std(t.to(torch.float64))
            if bool((sigma == 0).any()):
                raise ValueError("t: std_scaling divides by sigma_t, which is 0 at t = 0; evaluate at t > 0")
            out = out / sigma.to(values.dtype).reshape(-1, 1, 1)
        if s.residual:
            out = out + self.process.limit_output(values, t, inputs=inputs)
        return out
