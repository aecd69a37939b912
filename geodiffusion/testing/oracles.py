"""Exact scores of noised Gaussian data: a training-free reference for samplers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion.kernels.base import Kernel
from geodiffusion.processes.base import LinearGaussianProcess
from geodiffusion.processes.gp import OUGaussianProcess, gaussian_conditional, shared_inputs

__all__ = ["GaussianScore", "GPScore", "moment_z_scores"]


class GaussianScore:
    r"""Exact :math:`\nabla_x \log p_t(x)` for data :math:`\mathcal{N}(\mu, \Sigma)` noised by a linear
    Gaussian process: :math:`p_t = \mathcal{N}(\alpha_t \mu, \alpha_t^2 \Sigma + \sigma_t^2 I)`.

    Shapes: ``t [B]`` or ``[]``, ``x [B, d]`` -> ``[B, d]``.
    """

    def __init__(self, process: LinearGaussianProcess, mean: Tensor, cov: Tensor) -> None:
        if not isinstance(process, LinearGaussianProcess):
            raise ValueError(f"GaussianScore needs a LinearGaussianProcess, got {type(process).__name__}")
        if process.event_ndim != 1:
            raise ValueError(f"GaussianScore works on vectors (event_ndim=1), got event_ndim={process.event_ndim}")
        d = mean.shape[-1]
        if mean.dim() != 1 or cov.shape != (d, d):
            raise ValueError(f"expected mean [d] and cov [d, d], got {list(mean.shape)} and {list(cov.shape)}")
        self.process, self.mean, self.cov = process, mean, cov

    def marginal_moments(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\alpha_t \mu, \alpha_t^2 \Sigma + \sigma_t^2 I)`, batched over ``t``."""
        t = torch.as_tensor(t, dtype=self.mean.dtype, device=self.mean.device)
        alpha = self.process.mean_scale(t)[..., None]
        sigma = self.process.std(t)[..., None, None]
        eye = torch.eye(self.mean.shape[-1], dtype=self.mean.dtype, device=self.mean.device)
        return alpha * self.mean, alpha[..., None] ** 2 * self.cov + sigma**2 * eye

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        m, c = self.marginal_moments(torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]))
        return -torch.linalg.solve(c.to(x.dtype), (x - m.to(x.dtype)).unsqueeze(-1)).squeeze(-1)

    def log_prob(self, t: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log p_t(x)`."""
        m, c = self.marginal_moments(torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]))
        diff = (x - m).unsqueeze(-1)
        maha = (diff.transpose(-1, -2) @ torch.linalg.solve(c, diff)).squeeze(-1).squeeze(-1)
        return -0.5 * (maha + torch.logdet(c) + x.shape[-1] * math.log(2 * math.pi))


class GPScore:
    r"""Exact scores when the data are GP samples :math:`y_0 \sim \mathcal{N}(m_0, K_0)` at inputs :math:`x`,
    noised by :class:`~geodiffusion.processes.gp.OUGaussianProcess` (limit :math:`\mathcal{N}(m, K)`): with
    :math:`a_t = e^{-B(t)/2}`, :math:`p_t = \mathcal{N}(m + a_t (m_0 - m),\ a_t^2 K_0 + (1 - a_t^2) K)`.

    Called like a score network, ``oracle(t, y, inputs=x)`` returns the output in the process's
    parametrisation; :meth:`score` is :math:`\nabla_y \log p_t`. The data kernel gets the process's jitter too.
    Shapes: ``t [B]`` or ``[]``, ``y [B, n, d]``, ``inputs [n, m]`` or ``[B, n, m]``.
    """

    def __init__(self, process: OUGaussianProcess, kernel: Kernel | None = None, mean: float | None = None) -> None:
        if not isinstance(process, OUGaussianProcess):
            raise ValueError(f"GPScore needs an OUGaussianProcess, got {type(process).__name__}")
        self.process = process
        self.kernel = process.kernel if kernel is None else kernel
        self.data_mean = process.spec.mean if mean is None else float(mean)
        if self.kernel.input_dim != process.kernel.input_dim or self.kernel.output_dim != process.kernel.output_dim:
            raise ValueError("kernel: expected the input and output dimensions of the process's kernel")

    def _data_gram(self, inputs: Tensor) -> Tensor:
        gram = self.kernel.gram(inputs.to(torch.float64))
        return gram + self.process.spec.jitter * torch.eye(gram.shape[-1], dtype=torch.float64, device=gram.device)

    def marginal_moments(self, t: Tensor | float, inputs: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean ``[..., n*d]`` and covariance ``[..., n*d, n*d]`` (point-major, float64) of :math:`p_t` at ``inputs``."""
        t = torch.as_tensor(t, dtype=torch.float64, device=inputs.device)
        # a batch sharing one time and one input set (as in samplers) needs one factorisation, not B
        if t.dim() == 1 and t.numel() > 1 and bool((t == t[0]).all()):
            t = t[:1]
        inputs = shared_inputs(inputs)
        a2 = torch.exp(-self.process.integrated_beta(t))[..., None, None]
        cov = a2 * self._data_gram(inputs) + (1 - a2) * self.process.factor(inputs).gram
        m = self.process.spec.mean
        mean = m + torch.sqrt(a2[..., 0]) * (self.data_mean - m)
        n_flat = cov.shape[-1]
        return mean.expand(cov.shape[:-2] + (n_flat,)), cov

    def log_prob(self, t: Tensor | float, y: Tensor, *, inputs: Tensor) -> Tensor:
        r""":math:`\log p_t(y)` at ``inputs``."""
        mean, cov = self.marginal_moments(t, inputs)
        flat = y.to(torch.float64).flatten(-2)
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(flat).to(y.dtype)

    def score(self, t: Tensor | float, y: Tensor, *, inputs: Tensor) -> Tensor:
        r""":math:`\nabla_y \log p_t(y) = -\Sigma_t^{-1}(y - \mu_t)`."""
        mean, cov = self.marginal_moments(t, inputs)
        diff = (y.to(torch.float64).flatten(-2) - mean).unsqueeze(-1)
        s = -torch.cholesky_solve(diff, torch.linalg.cholesky(cov)).squeeze(-1)
        return s.reshape(y.shape).to(y.dtype)

    def __call__(self, t: Tensor, y: Tensor, *, inputs: Tensor) -> Tensor:
        return self.process.output_from_score(self.score(t, y, inputs=inputs), t, inputs=inputs)

    def posterior(self, context_inputs: Tensor, context_values: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        r"""The exact GP posterior of the data at ``inputs [n, m]`` given ``context_values [nc, d]`` at
        ``context_inputs [nc, m]``: mean ``[n*d]`` and covariance ``[n*d, n*d]`` (point-major, float64),
        :math:`\mu_* + K_{*c} K_{cc}^{-1}(y_c - \mu_c)`, :math:`K_{**} - K_{*c} K_{cc}^{-1} K_{c*}`."""
        nc = context_inputs.shape[-2] * self.kernel.output_dim
        gram = self._data_gram(torch.cat([context_inputs, inputs], -2))
        shift, cov = gaussian_conditional(gram, nc, context_values.to(torch.float64).flatten(-2) - self.data_mean)
        return self.data_mean + shift, cov


def moment_z_scores(samples: Tensor, mean: Tensor, cov: Tensor) -> tuple[float, float]:
    r"""Worst :math:`|z|` of the sample mean and of the sample covariance's entries of ``samples [n, ...]`` against
    exact moments ``mean [D]``, ``cov [D, D]`` (:math:`D` = the flattened event), with the Gaussian standard errors
    :math:`\sqrt{\Sigma_{ii}/n}` and :math:`\sqrt{(\Sigma_{ii}\Sigma_{jj} + \Sigma_{ij}^2)/n}`."""
    n, flat = samples.shape[0], samples.flatten(1)
    if flat.shape[1] != mean.numel() or cov.shape != (mean.numel(), mean.numel()):
        raise ValueError(
            f"samples, mean, cov: expected [n, ...] with D = {mean.numel()} entries per sample and cov [D, D], got "
            f"{list(samples.shape)}, {list(mean.shape)}, {list(cov.shape)}"
        )
    if n < 2:
        raise ValueError(f"samples: expected at least 2 samples for a covariance, got {n}")
    var = cov.diagonal()
    z_mean = (flat.mean(0) - mean.reshape(-1)) / (var / n).sqrt()
    z_cov = (torch.cov(flat.T) - cov) / ((var[:, None] * var[None] + cov**2) / n).sqrt()
    return float(z_mean.abs().max()), float(z_cov.abs().max())
