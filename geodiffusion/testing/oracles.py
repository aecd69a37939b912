"""Exact scores of noised Gaussian data: a training-free reference for samplers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion.processes.base import LinearGaussianProcess

__all__ = ["GaussianScore"]


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
