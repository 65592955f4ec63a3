"""Muon off CUDA: torch.optim.Muon's update with its Newton-Schulz iteration in float32, and on the CPU through an
eigendecomposition for the larger matrices. On CUDA it is torch's own step."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

# From this size of an (m, n) matrix's largest product in the iteration, m * m * n with m <= n, the iteration goes
# through the Gram matrix's eigendecomposition (`_spectral_form`). Around it the two take about the same time on the
# 2-core VM (square 192s, 7.1M: 0.98x; 96 x 288, 2.7M: 1.04x), below it mostly longer (square 160s, 4.1M: 1.14x),
# above it less (128 x 384, 6.3M: 0.81x). benchmarks/optimizer_step.py sets it to inf for its plain side.
SPECTRAL_FORM_MIN_WORK = 6_000_000


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its settings, checks and state), with the Newton-Schulz iteration in float32 off CUDA, and
    in its spectral form for the CPU's larger matrices (`orthogonalized`).

    torch runs the iteration in bfloat16, which is right on a GPU; a CPU without bfloat16 matmuls emulates them,
    5 times slower than float32 on the 2-core VM of docs/benchmarks.md, which made the optimizer step a third of a
    training step. On CUDA this is torch's own step."""

    @torch.no_grad()
    def step(self, closure=None):
        if all(p.device.type == "cuda" for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # (group, parameter, its state), taken here: the threads below only read the dict
        todo = [(g, p, self.state[p]) for g in self.param_groups for p in g["params"] if p.grad is not None]
        # The iteration is float32 by design, even when a step is taken under autocast (manual optimization);
        # the threads below start without it, so in turn the step must too.
        with torch.autocast("cpu", enabled=False):
            _update_side_by_side(todo)
        return loss


def _muon_update(group: dict, p: torch.Tensor, state: dict) -> None:
    """torch.optim.Muon's update of one matrix p (m, n), in place: its momentum, the orthogonalized step, weight
    decay."""
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(p.grad)
    buf, momentum, lr = state["momentum_buffer"], group["momentum"], group["lr"]
    buf.lerp_(p.grad, 1 - momentum)
    update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
    update = orthogonalized(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
    p.mul_(1 - lr * group["weight_decay"])
    p.add_(update.to(p.dtype), alpha=-lr * _lr_scale(group["adjust_lr_fn"], p.shape))


def _update_side_by_side(todo: list[tuple[dict, torch.Tensor, dict]]) -> None:
    """_muon_update for every (group, p, state), side by side in threads that split torch's intra-op threads among
    them (one each on the 2-core VM) when every p is a plain CPU tensor; otherwise in turn. Largest first, so that
    the threads finish together. If one raises, the others still finish, and its error is raised.

    Why: LAPACK's eigh hardly uses a second core (a 256 x 256 one: 5.1 ms on two threads, 5.6 ms on one, on the
    2-core VM), so matrices side by side, one a core, take 0.75x the time in turn for the fast recipe's 16 matrices
    at 4 x 256 (benchmarks/optimizer_step.py). The threads live for this call only, so none is left for a later
    fork (DataLoader workers) to copy; torch's thread count, which the workers set for the whole process, is set
    back after (a thread started during the step keeps the workers' count). Starting them every step holds no
    memory: the process's resident size stayed within 460-474 MiB over 400 steps."""
    main_threads = torch.get_num_threads()
    threads = min(main_threads, len(todo))
    plain = (torch.Tensor, torch.nn.Parameter)  # not a subclass such as DTensor, whose ops may talk to other ranks
    if threads < 2 or not all(type(p) in plain and p.device.type == "cpu" for _, p, _ in todo):
        for item in todo:
            _muon_update(*item)
        return

    def in_one_thread(item: tuple[dict, torch.Tensor, dict]) -> None:
        with torch.no_grad():  # grad mode is per thread
            _muon_update(*item)

    each = main_threads // threads  # intra-op threads of each worker
    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(each,)) as pool:
            largest_first = sorted(todo, key=lambda item: item[1].numel(), reverse=True)
            list(pool.map(in_one_thread, largest_first))  # list(): raises what a thread raised
    finally:
        torch.set_num_threads(main_threads)


def orthogonalized(update: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration on `update` (m, n), with its coefficients and steps, in float32:
    the nearest semi-orthogonal matrix, roughly. On the CPU from SPECTRAL_FORM_MIN_WORK up, in the spectral form."""
    x = update.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T  # (m, n), m <= n: the Gram matrix below is the smaller one
    norm = x.norm()
    x = x / norm.clamp(min=eps)  # spectral norm <= 1
    # A non-finite update (its norm says) takes torch's iteration, which leaves it non-finite; LAPACK may raise.
    # The spectral form is for LAPACK's eigh: other devices (MPS) keep the iteration.
    large = x.shape[0] ** 2 * x.shape[1] >= SPECTRAL_FORM_MIN_WORK
    if large and x.device.type == "cpu" and bool(torch.isfinite(norm)):
        x = _spectral_form(x, coefficients, steps)
    else:
        x = _iterated(x, coefficients, steps)
    return x.T if tall else x


def _iterated(x: torch.Tensor, coefficients, steps: int) -> torch.Tensor:
    """torch's iteration on x (m, n), m <= n, in x's dtype."""
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def _spectral_form(x: torch.Tensor, coefficients, steps: int) -> torch.Tensor:
    """The same iteration for x (m, n), m <= n, through the eigendecomposition G = V diag(lam) V^T of G = x x^T.
    Each step is x <- q(G) x with q(G) = aI + bG + cG^2, and then G <- q(G)^2 G: every q is a polynomial in the first
    G, so the result is V diag(f) V^T x, where f is the product of the q's run on the eigenvalues (lam <- q^2 lam).
    One (m, m) eigh and three products in place of 15: about half the plain iteration's time, and 0.65x the Gram
    form it replaced, on the fast recipe's matrices at 4 x 256 (benchmarks/optimizer_step.py). G's float32 rounding
    blurs the eigenvectors of its smallest eigenvalues: within 2e-3 of the float64 iteration (relative) on spectra
    spanning 4 to 8 decades, a hundredth of the error of torch's own bfloat16 iteration; the plain float32 one is
    within 1e-4."""
    a, b, c = coefficients
    lam, vectors = torch.linalg.eigh(x @ x.T)  # (m,), (m, m)
    lam = lam.double()  # the scalar iteration in float64: m numbers
    f = torch.ones_like(lam)
    for _ in range(steps):
        q = a + lam * (b + c * lam)
        f, lam = f * q, lam * q * q
    return (vectors * f.to(x.dtype)) @ vectors.T @ x  # (V diag(f) V^T) x: (m, m, m) then (m, m, n), as m <= n


def _lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scale of the learning rate for an (A, B) matrix."""
    A, B = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return math.sqrt(max(1, A / B))  # "original" (Keller Jordan's), torch's default
