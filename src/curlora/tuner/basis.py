"""The frozen factors C (out × r) and R (r × in) of an adapter W + α·C·U·R, for each basis.

- ``cur`` (CURLoRA): C = W[:, cols], R = W[rows, :], the sampled columns and rows themselves.
- ``random``: Gaussian matrices of C's and R's shapes, rescaled to the sampled C's and R's Frobenius norms.
  Tests whether drawing C and R *from W* matters, or any r-dimensional pair at that scale does as well.
- ``svd-top`` / ``svd-bottom``: the top-r (largest) or bottom-r (smallest) left and right singular vectors of W,
  C = u₁…u_r, R = v₁ᵀ…v_rᵀ, each rescaled to the sampled C's and R's Frobenius norms.

Every basis starts from the same CUR sample, so one `sampling`/`seed` sets the scale of all of them and the
controls differ from CURLoRA only in the subspace. Singular values are not folded into the SVD factors: with
them, svd-top's factors would be ~σ_max times larger than svd-bottom's, and under Adam (steps of ~lr per entry
of U) the size of ΔW would scale with them — a step-size difference, not a subspace one.

Nothing but the sample's indices is stored: every basis is rebuilt from W, the config seed and the layer name,
deterministically (random draws from a seeded CPU generator; SVD in float64 on the CPU, signs fixed so that each
left singular vector's largest-magnitude entry is positive).
"""

from __future__ import annotations

import torch

from curlora import cur
from curlora.errors import CurloraError

BASES = ("cur", "random", "svd-top", "svd-bottom")

# relative gap between the r-th and (r+1)-th singular value below which the subspace is not well defined
_SVD_GAP = 1e-9


def check_basis(name: str) -> None:
    if name not in BASES:
        raise CurloraError(f"unknown basis {name!r}; choose one of: {', '.join(BASES)}")


def factors(
    weight: torch.Tensor, selection: cur.CURSelection, basis: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """C and R of `basis` for `weight` (out × in) in its dtype and device. `seed` is the layer's own seed
    (`cur.layer_seed`); `selection` the CUR sample whose C and R set the norms."""
    check_basis(basis)
    c, r = cur.cur_factors(weight, selection)
    if basis == "cur":
        return c, r
    if basis == "random":
        gen = torch.Generator(device="cpu").manual_seed(cur.layer_seed(seed, "random-basis"))
        c_dir = torch.randn(c.shape, dtype=torch.float64, generator=gen)
        r_dir = torch.randn(r.shape, dtype=torch.float64, generator=gen)
    else:
        c_dir, r_dir = singular_vectors(weight, selection.cols.numel(), top=basis == "svd-top")
    return _with_norm(c_dir, c), _with_norm(r_dir, r)


def _with_norm(direction: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`direction` (float64, CPU) rescaled to ‖like‖_F, in `like`'s dtype and device."""
    target = like.detach().to(torch.float64).norm().cpu()
    return (direction * (target / direction.norm())).to(like.dtype).to(like.device).contiguous()


def singular_vectors(weight: torch.Tensor, r: int, *, top: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, V_rᵀ): the r left (out × r) and right (r × in) singular vectors of `weight` with the largest
    (`top`) or smallest singular values, orthonormal, in float64 on the CPU, sign-fixed."""
    w = weight.detach().to(torch.float64).cpu()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # s descending
    k = s.numel()
    if not 1 <= r <= k:
        raise CurloraError(f"rank r={r} does not fit a {tuple(w.shape)} weight; choose 1 <= r <= {k}")
    keep = slice(0, r) if top else slice(k - r, k)
    if r < k:  # the chosen subspace must be unique, or loading could rebuild another one
        inside, outside = (s[r - 1], s[r]) if top else (s[k - r], s[k - r - 1])
        if abs(float(inside - outside)) <= _SVD_GAP * float(s[0]):
            raise CurloraError(
                f"the weight's singular values {r} and {r + 1} from the {'top' if top else 'bottom'} are equal, so "
                "its singular subspace of that rank is not unique; choose another rank"
            )
    u_r, vh_r = u[:, keep], vh[keep, :]
    # SVD fixes each pair (u_i, v_i) only up to a common sign: make u_i's largest-magnitude entry positive
    signs = torch.sign(u_r.gather(0, u_r.abs().argmax(dim=0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1.0
    return (u_r * signs).contiguous(), (vh_r * signs[:, None]).contiguous()
