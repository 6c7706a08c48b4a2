"""DyNet (Zhang et al., 2020) as a filter generator: fixed bases fused with predicted coefficients.

DyNet builds each example's kernel as a linear fusion of a few sample-independent ("fixed") kernels
with coefficients from a coefficient prediction module (GAP -> FC layers); the aim is fewer FLOPs at
equal accuracy. There is no public code (REFERENCE §3), so two choices here are ours:

- **The bases are fixed, not learned** (registered buffers): the discrete polynomials of total degree
  ≤ ``degree`` on the K×K window — monomials 1, x, y, x², xy, y², … of the window offsets (normalised
  to [-1, 1], x along columns, y along rows, row-major like ``F.unfold``), orthogonalised in that order
  by Gram–Schmidt (QR with a positive diagonal) and scaled to unit RMS per entry (norm K). This makes
  DyNet a genuinely different point from CondConv/DynamicConv, whose experts are learned. Why
  polynomials: with DFN's softmax over the window, a degree-2 fusion ``a + b·x + c·y + d·x² + e·xy +
  f·y²`` is the log of a Gaussian, so the degree-2 bases span *every* Gaussian blob filter — any
  sub-pixel displacement (the blob's centre) with any blur (its covariance): exactly the filters a
  motion predictor needs, from 5 numbers instead of K*K. (Softmax ignores the constant basis, so it
  is dropped when ``softmax=True``; it is kept with ``softmax=False``.)
- **Coefficient prediction module**: GAP -> FC -> ReLU -> FC (``mode="conv"``, as published), or the
  same MLP as two 1x1 convs per pixel (``mode="local"``). No output activation: the softmax in the
  filtering layer normalises, and a bounded coefficient would cap how sharp a filter can be.

What is generated: the fused filter ``Σ_j c_j B_j`` (un-normalised), plus one directly predicted
dynamic-bias value when ``dynamic_bias=True``; applied to the latest frame by dynamic local filtering
(local) or dynamic convolution (conv), whose softmax keeps predictions convex combinations in [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from einops import einsum, rearrange
from torch import nn

from dfn.generators.base import FilterGenerator, Mode, pooled
from dfn.generators.dfn import he_uniform_
from dfn.layers import DynamicConvolution, DynamicLocalFiltering


def polynomial_bases(kernel_size: int, degree: int, constant: bool = True) -> torch.Tensor:
    """Orthogonal polynomial filters on the K×K window: (n, K*K), rows of norm K (RMS 1 per entry).

    Row j is the j-th monomial x^p·y^q (ordered by total degree p+q, then by q) after Gram–Schmidt
    against the earlier rows; x, y are the window's column/row offsets scaled to [-1, 1].
    n = (degree+1)(degree+2)/2, minus one without the ``constant`` row (the others are zero-mean).
    """
    r = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=torch.float64) - r
    offsets = offsets / max(r, 1)  # [-1, 1]; K = 1 has the single offset 0
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")  # (K, K) each, row-major window
    x, y = x.reshape(-1), y.reshape(-1)  # (K*K,)
    monomials = [x**p * y**q for total in range(degree + 1) for q in range(total + 1) for p in [total - q]]
    a = torch.stack(monomials, dim=1)  # (K*K, n)
    if a.shape[1] > a.shape[0]:
        raise ValueError(f"DyNet: degree {degree} gives {a.shape[1]} bases, more than the "
                         f"{a.shape[0]} values of a {kernel_size}x{kernel_size} filter")
    q, rr = torch.linalg.qr(a)  # Gram–Schmidt in monomial order
    q = q * torch.sign(torch.diagonal(rr))  # positive diagonal: a unique, deterministic basis
    if torch.diagonal(rr).abs().min() < 1e-9:
        raise ValueError(f"DyNet: degree {degree} polynomials are linearly dependent on a "
                         f"{kernel_size}x{kernel_size} window; lower the degree")
    bases = (q.T * kernel_size).float()  # (n, K*K), each row with RMS 1 per entry
    return bases if constant else bases[1:]


class DyNet(FilterGenerator):
    """Filters fused from fixed polynomial bases with predicted coefficients (see module docstring).

    forward(features (B, F, H, W)) returns un-normalised filters:
      - local: (B, K*K[+1], H, W);  conv: (B, K*K[+1]).
    Learned parameters: only the coefficient prediction module (F -> F/reduction -> bases [+1]).
    """

    bases: torch.Tensor

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # DyNet paper: one fused kernel per example
        degree: int = 2,  # ours: the smallest polynomial set whose softmax spans all Gaussian blobs
        reduction: int = 4,  # ours (DyNet has no public code): hidden width F / 4, as in DynamicConv
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K filter values
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
    ) -> None:
        super().__init__(kernel_size, mode)
        if degree < 0:
            raise ValueError(f"DyNet: degree must be >= 0, got {degree}")
        if reduction < 1:
            raise ValueError(f"DyNet: reduction must be >= 1, got {reduction}")
        if dilation < 1:
            raise ValueError(f"DyNet: dilation must be >= 1, got {dilation}")
        self.degree, self.reduction, self.dilation = degree, reduction, dilation
        self.softmax, self.dynamic_bias = softmax, dynamic_bias
        if softmax and degree == 0:
            raise ValueError("DyNet: degree 0 with softmax=True leaves no basis (softmax ignores a constant "
                             "filter); use degree >= 1 or softmax=False")
        # Fixed, deterministic bases: a buffer (saved with the model, never trained). Softmax is blind to
        # adding a constant, so with softmax the constant basis is dropped: its coefficient would never
        # get a gradient (degree 2: 5 bases with softmax, 6 without).
        self.register_buffer("bases", polynomial_bases(kernel_size, degree, constant=not softmax))  # (n_bases, K*K)

    @property
    def num_bases(self) -> int:
        return self.bases.shape[0]

    def _build(self, features: int, channels: int) -> None:
        layer = DynamicLocalFiltering if self.mode == "local" else DynamicConvolution
        self.filtering = layer(self.kernel_size, self.dilation, self.softmax, self.dynamic_bias)
        out = self.num_bases + int(self.dynamic_bias)  # coefficients (+ the dynamic bias itself)
        hidden = max(1, features // self.reduction)
        if self.mode == "local":
            self.coefficients = nn.Sequential(nn.Conv2d(features, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1))
        else:
            self.coefficients = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, out))
        he_uniform_(self.coefficients)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W) -> Σ_j c_j B_j [, bias]: (B, K*K[+1], H, W) local / (B, K*K[+1]) conv."""
        n = self.num_bases
        if self.mode == "local":
            coef = self.coefficients(features)  # (B, n_bases[+1], H, W): per-pixel CPM (1x1 convs)
            fused = einsum(coef[:, :n], self.bases, "b n h w, n k -> b k h w")  # (B, K*K, H, W)
        else:
            coef = self.coefficients(pooled(features))  # (B, n_bases[+1]): GAP -> FC -> ReLU -> FC
            fused = einsum(coef[:, :n], self.bases, "b n, n k -> b k")  # (B, K*K)
        return torch.cat([fused, coef[:, n:]], dim=1)  # (B, K*K[+1][, H, W]): the bias value is appended

    def basis_images(self) -> torch.Tensor:
        """The fixed bases as K×K images, (n_bases, K, K), for plotting."""
        return rearrange(self.bases, "n (kh kw) -> n kh kw", kh=self.kernel_size)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "bases": self.num_bases, "basis": f"polynomial, degree {self.degree}",
                "reduction": self.reduction, "dilation": self.dilation, "softmax": self.softmax,
                "dynamic_bias": self.dynamic_bias}


__all__ = ["DyNet", "polynomial_bases"]
