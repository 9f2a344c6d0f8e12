"""CSD's active-set iteration for a batch of voxels, with few factorisations.

Each voxel ``v`` repeats DIPY's step (Tournier 2007): with ``A`` the rows of ``B_reg``
where its last fODF estimate fell below the threshold, solve ``Q f = z`` for
``Q = P + B_A^T B_A``, and stop when the new set is the set solved with (DIPY's rule).

A voxel's set changes little after its first iterations (fibercup at SNR 20, lmax 8:
about 78 of 181 rows active; 18 of them change at the second iteration, 5 at the third,
1 at the fourth, fewer after), while factoring a 45x45 matrix is the dearest step on a
CPU. So each voxel keeps the Cholesky factor ``L`` of the last set it factored (its
*base*, ``Q_b = L L^T``) and, while its set differs from the base in at most ``max_rank``
rows, solves through the Woodbury identity instead of a new factorisation::

    Q = Q_b + U S U^T       U: (C, r) the changed rows of B_reg, S = +1 added, -1 removed
    g = L^-1 z,  Y = L^-1 U,  K = S + Y^T Y      (r x r, symmetric)
    f = L^-T (g - Y K^-1 Y^T g)

Both routes solve the same system, so the iterates, sets and iteration counts are DIPY's
up to rounding. On that fibercup tile a voxel then needs 1.6 factorisations and 2 Woodbury
solves where DIPY factors 3.6 times; with ``max_rank=0`` every iteration factors anew. Every operation is batched over voxels (torch's batched Cholesky and
triangular solves), on CPU or GPU.
"""

from __future__ import annotations

import torch

MU = 1e-5          # added to the diagonal when a factorisation fails (DIPY's regulariser; never seen in float64)
MAX_RANK = 12      # changed rows solved by Woodbury; above, factoring anew is cheaper (measured: 8-16 best)
RANK_BUCKETS = (0, 6, 10_000)    # updates grouped by rank, padded to the group's largest


def cholesky_solve(b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Solve ``L L^T x = b`` (two triangular solves: faster than ``torch.cholesky_solve`` on CPU)."""
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)


class Factors:
    """Per-voxel Cholesky factors of the base sets: ``L (V, C, C)``, ``g = L^-1 z (V, C)``, ``base (V, S)``."""

    def __init__(self, z: torch.Tensor, P: torch.Tensor, B_reg: torch.Tensor):
        V, C = z.shape
        self.z, self.B_reg = z, B_reg
        rows, cols = torch.tril_indices(C, C, device=z.device)
        # LAPACK works on column-major matrices: Q and L are kept so (views ``.mT`` of row-major buffers),
        # else every factorisation and triangular solve starts with a transposed copy
        self.lower = cols * C + rows                           # flat positions of the lower triangle, column-major
        self.outer = B_reg[:, rows] * B_reg[:, cols]           # (S, C(C+1)/2): each row's b b^T, lower half
        self.P_lower = P[rows, cols]
        self.eye = torch.eye(C, dtype=z.dtype, device=z.device)
        self.L = z.new_empty((V, C, C)).mT         # column-major; read only where has_base
        self.g = z.new_zeros((V, C))
        self.base = torch.zeros((V, B_reg.shape[0]), dtype=torch.bool, device=z.device)
        self.has_base = torch.zeros(V, dtype=torch.bool, device=z.device)

    def factor(self, vox: torch.Tensor, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Factor ``Q`` of ``sets`` for voxels ``vox``, make them their bases; returns ``(f, failed)``."""
        n, C = len(vox), self.z.shape[1]
        # only the lower triangle (the Cholesky reads no more): half the product, and no need to clear the rest
        Q = self.z.new_empty((n, C * C)).index_copy_(1, self.lower, torch.addmm(self.P_lower, sets.to(self.z.dtype),
                                                                                  self.outer)).view(n, C, C).mT
        if n == len(self.L):                                  # every voxel (the first iteration): no copy of L
            L, info = torch.linalg.cholesky_ex(Q, out=(self.L, torch.empty(n, dtype=torch.int32, device=Q.device)))
        else:
            L, info = torch.linalg.cholesky_ex(Q)
        failed = info != 0
        if bool(failed.any()):
            L[failed], info[failed] = torch.linalg.cholesky_ex(Q[failed] + MU * self.eye)
            failed = info != 0
        g = torch.linalg.solve_triangular(L, self.z[vox].unsqueeze(-1), upper=False).squeeze(-1)
        ok = ~failed
        keep = vox if bool(ok.all()) else vox[ok]
        if L is not self.L:
            self.L.index_copy_(0, keep, L if keep is vox else L[ok])
        self.g.index_copy_(0, keep, g if keep is vox else g[ok])
        self.base.index_copy_(0, keep, sets if keep is vox else sets[ok])
        self.has_base[keep] = True
        return back_substitute(L, g), failed

    def update(self, vox: torch.Tensor, changed: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve for sets differing from the bases of ``vox`` in the rows ``changed (n, S)``
        (at most ``rank`` per voxel) by Woodbury; returns ``(f, failed)``."""
        L, g = self.L[vox], self.g[vox]
        if rank == 0:
            return back_substitute(L, g), torch.zeros_like(vox, dtype=torch.bool)
        rows = changed.to(torch.uint8).topk(rank, dim=1).indices              # (n, r): the changed rows first
        valid = torch.arange(rank, device=vox.device) < changed.sum(dim=1, keepdim=True)
        removed = self.base[vox].gather(1, rows)
        U = self.B_reg[rows] * valid.unsqueeze(-1)                             # (n, r, C); padding rows are zero
        Y = torch.linalg.solve_triangular(L, U.mT, upper=False)                # (n, C, r)
        sign = torch.where(valid & removed, -1.0, 1.0).to(g.dtype)             # padding: 1, an identity row of K
        K = Y.mT @ Y + torch.diag_embed(sign)
        c, info = torch.linalg.solve_ex(K, Y.mT @ g.unsqueeze(-1))
        return back_substitute(L, g - (Y @ c).squeeze(-1)), info != 0


def back_substitute(L: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``L^-T g`` for ``L (n, C, C)``, ``g (n, C)``, as ``g^T L^-1`` (no transposed copy of ``L``)."""
    return torch.linalg.solve_triangular(L, g.unsqueeze(1), upper=False, left=False).squeeze(1)


def iterate(z: torch.Tensor, P: torch.Tensor, B_reg: torch.Tensor, f: torch.Tensor, threshold: torch.Tensor,
            small: torch.Tensor, convergence: int, max_rank: int | None = None) -> dict[str, torch.Tensor]:
    """Run the active-set iteration from the first estimate ``f (V, C)`` and its set ``small (V, S)``.

    Voxels with an empty set keep ``f``. Returns ``coeffs``, ``iterations`` (0: no
    constraint was needed), ``converged`` and ``cholesky_failed`` (a factorisation failed
    even with ``MU`` added: the voxel keeps its last iterate), all ``(V, ...)``.
    """
    V = z.shape[0]
    if max_rank is None:    # Woodbury in float64 only: in float32 its small pivots (1 - b^T Q^-1 b) lose the answer
        max_rank = MAX_RANK if z.dtype == torch.float64 else 0
    f, small = f.clone(), small.clone()
    active = small.any(dim=1)
    iterations = torch.zeros(V, dtype=torch.int32, device=z.device)
    failed = torch.zeros(V, dtype=torch.bool, device=z.device)
    factors = Factors(z, P, B_reg)
    for it in range(1, convergence + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        sets = small[idx]
        changed = sets ^ factors.base[idx]
        r = changed.sum(dim=1)
        f_new = torch.empty((len(idx), z.shape[1]), dtype=z.dtype, device=z.device)
        bad = torch.zeros(len(idx), dtype=torch.bool, device=z.device)
        cheap = factors.has_base[idx] & (r <= max_rank)
        low = -1
        for high in RANK_BUCKETS:                                 # similar ranks together: less padding
            w = (cheap & (r > low) & (r <= min(high, max_rank))).nonzero().squeeze(1)
            low = high
            if w.numel():
                f_new[w], singular = factors.update(idx[w], changed[w], int(r[w].max()))
                cheap[w[singular]] = False                         # rare: factor those anew
        k = (~cheap).nonzero().squeeze(1)
        if k.numel():
            f_new[k], bad[k] = factors.factor(idx[k], sets[k])
        new_small = f_new @ B_reg.T < threshold[idx]
        same = (new_small == sets).all(dim=1)
        if bool(bad.any()):                                       # rare: those keep their last iterate
            failed[idx[bad]] = True
            same |= bad
            idx, f_new, new_small = idx[~bad], f_new[~bad], new_small[~bad]
            same = same[~bad]
        f.index_copy_(0, idx, f_new)
        small.index_copy_(0, idx, new_small)
        iterations[idx] = it
        active[idx[same]] = False
    return {"coeffs": f, "iterations": iterations, "converged": ~active & ~failed, "cholesky_failed": failed}
