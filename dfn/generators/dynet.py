"""DyNet (Zhang et al., 2020) as a filter generator: a few input-independent kernels fused per sample.

DyNet builds each example's kernel as a linear fusion ``Σ_j c_j W_j`` of a few *learned*,
sample-independent ("fixed") kernels, with coefficients from a coefficient prediction module (GAP -> FC
layers); the aim is fewer FLOPs at equal accuracy (Zhang et al. 2020). There is no public code.

- ``bank="learned"`` (the paper; default): ``kernels`` learned K×K kernels (a parameter (N, K*K[+1]);
  with ``dynamic_bias`` each kernel also has a bias value, fused with the same coefficients).
- ``bank="polynomial"`` (ours): the bank is *not learned* — the discrete polynomials of total degree
  ≤ ``degree`` on the window (monomials 1, x, y, x², xy, y², … of the offsets scaled to [-1, 1],
  orthogonalised in that order, unit RMS per entry). Under DFN's softmax a degree-2 fusion is the log of
  a Gaussian, so the degree-2 bank spans every Gaussian blob filter (any sub-pixel shift with any blur)
  from 5 numbers. Softmax ignores a constant, so the constant polynomial is dropped with ``softmax``.
  With ``dynamic_bias`` the bias is one more predicted coefficient (a bank row that is 1 on the bias).
- Coefficient prediction module: GAP -> FC -> ReLU -> FC (``mode="conv"``, the paper), or the same MLP
  as two 1x1 convs per pixel (``mode="local"``, our extension). Hidden width F / ``reduction`` (ours:
  DyNet publishes no code; as DynamicConv). No output activation: DyNet's coefficients are unconstrained.

Normalisation (``softmax=True``, DFN's): the *fused* filter is softmax-normalised by the filtering
layer, as DFN normalises its generated filter. (Normalising each kernel first, as CondConv/DynamicConv
do here, would not keep a convex result: DyNet's coefficients can be negative.) Predictions are convex
combinations of neighbourhood pixels, in [0, 1].

``identity_init`` (ours; default on): the fused filter starts ≈ the centre filter — learned bank:
every kernel centre-peaked and coefficients 1/N each; polynomial bank: the coefficients of a narrow
centred Gaussian (needs degree ≥ 2) — so an untrained model copies the last frame.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from dfn.checks import fail
from dfn.generators.base import Mode, check_choice, check_int, pooled
from dfn.ops import PaddingMode
from dfn.generators.initialisation import CENTRE_WEIGHT, IDENTITY_WEIGHT_SCALE, he_uniform_
from dfn.generators.mixture import KernelMixture


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
        raise fail("DyNet", "degree", f"one that gives at most {a.shape[0]} bases", degree,
                   meaning=f"the values of a {kernel_size}x{kernel_size} filter; degree {degree} gives "
                           f"{a.shape[1]} bases, more than the {a.shape[0]} values")
    q, rr = torch.linalg.qr(a)  # Gram–Schmidt in monomial order
    q = q * torch.sign(torch.diagonal(rr))  # positive diagonal: a unique, deterministic basis
    if torch.diagonal(rr).abs().min() < 1e-9:
        raise fail("DyNet", "degree", f"low enough for independent polynomials on a {kernel_size}x{kernel_size} "
                   "window", degree, meaning="these are linearly dependent: lower the degree")
    bases = (q.T * kernel_size).float()  # (n, K*K), each row with RMS 1 per entry
    return bases if constant else bases[1:]


class DyNet(KernelMixture):
    """Filters fused from a bank of input-independent kernels with predicted coefficients (module doc).

    forward(features (B, F, H, W)) returns the fused, un-normalised filters:
      - local: (B, K*K[+1], H, W);  conv: (B, K*K[+1]).
    """

    def __init__(
        self,
        kernel_size: int = 9,  # DFN paper, Moving MNIST: 9x9 filters
        mode: Mode = "conv",  # DyNet paper: one fused kernel per example ("local" is ours)
        bank: Literal["learned", "polynomial"] = "learned",  # DyNet paper: learned fixed kernels
        kernels: int = 4,  # learned bank size (ours: DyNet's is not public; as DynamicConv's K = 4)
        degree: int = 2,  # polynomial bank only (ours): quadratics span every Gaussian blob under softmax
        reduction: int = 4,  # ours (DyNet has no public code): hidden width F / 4, as in DynamicConv
        dilation: int = 1,
        softmax: bool = True,  # DFN paper: softmax over the K*K taps of the fused filter
        dynamic_bias: bool = False,  # DFN paper: on for highway, off for Moving MNIST
        identity_init: bool = True,  # ours: the fused filter starts at the centre filter
        padding_mode: PaddingMode = "zeros",  # paper (black background); replicate/reflect for natural video
    ) -> None:
        check_choice("DyNet", "bank", bank, ("learned", "polynomial"))
        check_int("DyNet", "kernels", kernels)
        check_int("DyNet", "degree", degree, minimum=0)
        check_int("DyNet", "reduction", reduction)
        if bank == "polynomial" and softmax and degree == 0:
            raise fail("DyNet", "degree", ">= 1 with softmax=True", degree,
                       meaning="degree 0 leaves no basis: softmax ignores a constant filter; or softmax=False")
        if bank == "polynomial" and identity_init and degree < 2:
            raise fail("DyNet", "degree", ">= 2 for identity_init with the polynomial bank", degree,
                       meaning="a narrow centred Gaussian; or identity_init: false")
        bases = polynomial_bases(kernel_size, degree, constant=not softmax) if bank == "polynomial" else None
        size = kernels if bases is None else bases.shape[0] + int(dynamic_bias)
        super().__init__(kernel_size, mode, size, dilation, softmax, dynamic_bias, identity_init,
                         normalise_experts=False, padding_mode=padding_mode)
        self.bank_kind, self.degree, self.reduction = bank, degree, reduction
        self._bases = bases

    @property
    def num_bases(self) -> int:
        """How many kernels are fused (polynomial bank: the polynomials, without the bias row)."""
        return self.size - int(self.dynamic_bias and self.bank_kind == "polynomial")

    def _build_bank(self) -> None:
        if self.bank_kind == "learned":
            return super()._build_bank()
        # Fixed polynomials (a buffer: saved with the model, never trained), (n, K*K); with dynamic bias
        # one more row (0, …, 0, 1) passes its coefficient through as the bias value: (n + 1, K*K + 1).
        bases, extra = self._bases, int(self.dynamic_bias)
        bank = torch.zeros(bases.shape[0] + extra, self.taps + extra)
        bank[: bases.shape[0], : self.taps] = bases
        if extra:
            bank[-1, -1] = 1.0
        self.register_buffer("bank", bank)

    def _build_coefficients(self, features: int) -> None:
        hidden = max(1, features // self.reduction)
        if self.mode == "local":
            layers = [nn.Conv2d(features, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, self.size, 1)]
        else:
            layers = [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, self.size)]
        self.coefficient_module = he_uniform_(nn.Sequential(*layers))
        if self.identity_init:
            last = self.coefficient_module[-1]
            he_uniform_(last, scale=IDENTITY_WEIGHT_SCALE)
            with torch.no_grad():
                last.bias.copy_(self._identity_coefficients())

    def _identity_coefficients(self) -> torch.Tensor:
        """Coefficients (N,) whose fusion is ≈ the centre filter (see the module docstring)."""
        if self.bank_kind == "learned":
            return torch.full((self.size,), 1.0 / self.size)  # Σc = 1 over centre-peaked kernels
        # A centred Gaussian's logits -s·(dx² + dy²): the 4 nearest taps get weight (1 - CENTRE_WEIGHT)/4
        # relative to the centre; its projection onto the orthogonal polynomials (row norm K) is exact.
        K, r = self.kernel_size, self.kernel_size // 2
        s = math.log(4 * CENTRE_WEIGHT / (1 - CENTRE_WEIGHT))
        offsets = torch.arange(K, dtype=torch.float32) - r
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        logits = (-s * (dx**2 + dy**2)).reshape(-1)  # (K*K,)
        n = self.num_bases
        coef = self.bank[:n, : self.taps] @ logits / (K * K)  # (n,)
        return torch.cat([coef, torch.zeros(self.size - n)])  # the bias coefficient starts at 0

    def coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """Coefficient prediction: (B, N, H, W) per pixel (1x1 convs) / (B, N) from GAP -> FC -> ReLU -> FC."""
        if self.mode == "local":
            return self.coefficient_module(features)  # (B, N, H, W)
        return self.coefficient_module(pooled(features))  # (B, N)

    @property
    def bases(self) -> torch.Tensor:
        """The fused kernels' K*K taps, (n, K*K) (without the dynamic-bias row/column)."""
        return self.bank[: self.num_bases, : self.taps]

    def basis_images(self) -> torch.Tensor:
        """The bank's kernels as K×K images, (n, K, K), for plotting."""
        return rearrange(self.bases, "n (kh kw) -> n kh kw", kh=self.kernel_size)

    def summary(self) -> dict[str, Any]:
        basis = f"polynomial, degree {self.degree}" if self.bank_kind == "polynomial" else "learned"
        return {**super().summary(), "bases": self.num_bases, "basis": basis, "reduction": self.reduction}


__all__ = ["DyNet", "polynomial_bases"]
