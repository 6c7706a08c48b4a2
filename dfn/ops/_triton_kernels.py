"""Triton kernel bodies for dynamic local filtering; wrapped by ``local_filter_triton``.

These are plain functions: ``local_filter_triton`` passes them through ``triton.jit`` on first use,
once per value of ``TRITON_INTERPRET`` (Triton reads that variable when a kernel is decorated, so
the same process can run compiled kernels on CUDA and interpreted ones on CPU in tests).

Layout (all contiguous): x (B, C, Hx, Wx); filters (B, K*K, H, W) shared or (B, C, K*K, H, W) per
channel; out / grad_out (B, C, H, W). Output pixel (i, j) reads x at (i + d·(k//K) − P,
j + d·(k%K) − P) for window tap k, masked to the x grid. Zero padding: x is the frame (Hx, Wx) =
(H, W) and P = d·(K//2), so out-of-frame taps read zeros. Replicate/reflect: x is the F.pad-ed
frame (H + 2P', W + 2P') and P = 0, so every tap is inside it.

Grid axis 0 (up to 2³¹−1 programs) walks the pixel tiles, axis 1 (up to 65535) the samples and
channel tiles. Each program handles BLOCK flattened output pixels of BLOCK_C channels of one sample; it loops over
the K*K taps with masked loads and accumulates in float32 whatever the input dtype. Offsets into
x, filters and outputs are int64 (a 64×3×256×256 batch with 9×9 filters has ~1.3e9 filter values).
"""

from __future__ import annotations

import triton.language as tl


def local_filter_fwd(x_ptr, f_ptr, out_ptr, C, H, W, Hx, Wx, P,
                     K: tl.constexpr, DIL: tl.constexpr, PER_CHANNEL: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
    """out[b, c, p] = Σ_k f[b, (c,) k, p] · x[b, c, p + off_k]; grid (⌈H·W/BLOCK⌉, B·⌈C/BLOCK_C⌉)."""
    pid_p = tl.program_id(0)
    pid_bc = tl.program_id(1)
    n_cb = tl.cdiv(C, BLOCK_C)
    b = (pid_bc // n_cb).to(tl.int64)
    c = (pid_bc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    cm = c < C
    row = b * C + c.to(tl.int64)  # (BLOCK_C,) index of the (b, c) plane
    HW = H * W
    p = pid_p * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flattened output pixels
    pm = p < HW
    i = p // W
    j = p % W
    acc = tl.zeros((BLOCK_C, BLOCK), dtype=tl.float32)
    for k in range(K * K):
        sy = i + DIL * (k // K) - P
        sx = j + DIL * (k % K) - P
        m = pm & (sy >= 0) & (sy < Hx) & (sx >= 0) & (sx < Wx)
        xv = tl.load(x_ptr + row[:, None] * Hx * Wx + (sy * Wx + sx)[None, :],
                     mask=cm[:, None] & m[None, :], other=0.0).to(tl.float32)
        if PER_CHANNEL:
            fv = tl.load(f_ptr + (row * (K * K) + k)[:, None] * HW + p[None, :],
                         mask=cm[:, None] & pm[None, :], other=0.0).to(tl.float32)
        else:  # one filter for all channels: loaded once, broadcast over the BLOCK_C rows
            fv = tl.load(f_ptr + (b * (K * K) + k) * HW + p, mask=pm, other=0.0).to(tl.float32)
            fv = fv[None, :]
        acc += xv * fv
    tl.store(out_ptr + row[:, None] * HW + p[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=cm[:, None] & pm[None, :])


def local_filter_bwd_x(g_ptr, f_ptr, gx_ptr, C, H, W, Hx, Wx, P,
                       K: tl.constexpr, DIL: tl.constexpr, PER_CHANNEL: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
    """grad_x[b, c, q] = Σ_k g[b, c, q − off_k] · f[b, (c,) k, q − off_k] — a gather over the x grid
    (the transposed filter), so no atomics; grid (⌈Hx·Wx/BLOCK⌉, B·⌈C/BLOCK_C⌉)."""
    pid_q = tl.program_id(0)
    pid_bc = tl.program_id(1)
    n_cb = tl.cdiv(C, BLOCK_C)
    b = (pid_bc // n_cb).to(tl.int64)
    c = (pid_bc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    row = b * C + c.to(tl.int64)
    HW = H * W
    q = pid_q * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flattened x pixels
    qm = q < Hx * Wx
    qy = q // Wx
    qx = q % Wx
    acc = tl.zeros((BLOCK_C, BLOCK), dtype=tl.float32)
    for k in range(K * K):
        oy = qy + P - DIL * (k // K)  # the output pixel whose tap k read x[q]
        ox = qx + P - DIL * (k % K)
        m = qm & (oy >= 0) & (oy < H) & (ox >= 0) & (ox < W)
        po = oy * W + ox
        gv = tl.load(g_ptr + row[:, None] * HW + po[None, :], mask=cm[:, None] & m[None, :],
                     other=0.0).to(tl.float32)
        if PER_CHANNEL:
            fv = tl.load(f_ptr + (row * (K * K) + k)[:, None] * HW + po[None, :],
                         mask=cm[:, None] & m[None, :], other=0.0).to(tl.float32)
        else:
            fv = tl.load(f_ptr + (b * (K * K) + k) * HW + po, mask=m, other=0.0).to(tl.float32)
            fv = fv[None, :]
        acc += gv * fv
    tl.store(gx_ptr + row[:, None] * Hx * Wx + q[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=cm[:, None] & qm[None, :])


def local_filter_bwd_f(g_ptr, x_ptr, gf_ptr, C, H, W, Hx, Wx, P,
                       K: tl.constexpr, DIL: tl.constexpr, PER_CHANNEL: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
    """grad_f[b, (c,) k, p] = Σ_c g[b, c, p] · x[b, c, p + off_k] (no sum for per-channel filters).
    Grid: per-channel (⌈H·W/BLOCK⌉, B·⌈C/BLOCK_C⌉); shared (⌈H·W/BLOCK⌉, B), channels looped."""
    pid_p = tl.program_id(0)
    pid0 = tl.program_id(1)
    HW = H * W
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    pm = p < HW
    i = p // W
    j = p % W
    if PER_CHANNEL:
        n_cb = tl.cdiv(C, BLOCK_C)
        b = (pid0 // n_cb).to(tl.int64)
        c = (pid0 % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        row = b * C + c.to(tl.int64)
        gv = tl.load(g_ptr + row[:, None] * HW + p[None, :], mask=cm[:, None] & pm[None, :],
                     other=0.0).to(tl.float32)
        for k in range(K * K):
            sy = i + DIL * (k // K) - P
            sx = j + DIL * (k % K) - P
            m = pm & (sy >= 0) & (sy < Hx) & (sx >= 0) & (sx < Wx)
            xv = tl.load(x_ptr + row[:, None] * Hx * Wx + (sy * Wx + sx)[None, :],
                         mask=cm[:, None] & m[None, :], other=0.0).to(tl.float32)
            tl.store(gf_ptr + (row * (K * K) + k)[:, None] * HW + p[None, :],
                     (gv * xv).to(gf_ptr.dtype.element_ty), mask=cm[:, None] & pm[None, :])
    else:
        b = pid0.to(tl.int64)
        for k in range(K * K):
            sy = i + DIL * (k // K) - P
            sx = j + DIL * (k % K) - P
            m = pm & (sy >= 0) & (sy < Hx) & (sx >= 0) & (sx < Wx)
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                cm = c < C
                row = b * C + c.to(tl.int64)
                gv = tl.load(g_ptr + row[:, None] * HW + p[None, :],
                             mask=cm[:, None] & pm[None, :], other=0.0).to(tl.float32)
                xv = tl.load(x_ptr + row[:, None] * Hx * Wx + (sy * Wx + sx)[None, :],
                             mask=cm[:, None] & m[None, :], other=0.0).to(tl.float32)
                acc += tl.sum(gv * xv, axis=0)
            tl.store(gf_ptr + (b * (K * K) + k) * HW + p, acc.to(gf_ptr.dtype.element_ty),
                     mask=pm)
