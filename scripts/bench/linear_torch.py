"""PyTorch reference timings for scripts/bench/gpu-linear.ts: naive chunked GLA in fp32, the same
algorithm as @tsformer/ops glaChunk's composite (chunks of 64, sub-chunks of 8, exact per-channel
decay inside a sub-chunk), forward and forward+backward, on CUDA when available. One JSON line per
shape: {"kind": "gla", "T", "B", "H", "D", "fwd_ms", "fwdbwd_ms", "device"} (or "error"); then the same
for DeltaNet and Gated DeltaNet (kind "deltanet" / "gated-deltanet", K = V = D, naive chunked WY/UT form).

    python3 scripts/bench/linear_torch.py --T 1024,4096 --B 4 --H 8 --D 64 [--check]

--check first compares the chunked form with the token-by-token recurrence (stderr).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F


def gla_recurrent(q, k, v, g, scale):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); [B, T, H, *]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V)
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t][..., None] * v[:, t][..., None, :]  # [B, H, K, V]
        out.append(torch.einsum('bhk,bhkv->bhv', q[:, t] * scale, S))
    return torch.stack(out, 1)  # [B, T, H, V]


def gla_chunk(q, k, v, g, scale, C=64, c=8):
    """Chunked GLA; q, k, g [B, T, H, K], v [B, T, H, V] -> o [B, T, H, V]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    nC = -(-T // C)
    Tp = nC * C
    nS = C // c

    def chunks(x):  # [B, T, H, X] -> [B, H, nC, C, X], zero padded at the end
        x = F.pad(x, (0, 0, 0, 0, 0, Tp - T))
        return x.transpose(1, 2).reshape(B, H, nC, C, x.shape[-1])

    qc, kc, vc, gc = chunks(q * scale), chunks(k), chunks(v), chunks(g)
    b = gc.cumsum(3)  # cumulative gate from the chunk start: [B, H, nC, C, K]
    bL = b[:, :, :, -1:]  # [B, H, nC, 1, K]
    # the state entering each chunk
    U = (kc * (bL - b).exp()).transpose(-1, -2) @ vc  # [B, H, nC, K, V]
    S = q.new_zeros(B, H, K, V)
    states = []
    for n in range(nC):
        states.append(S)
        S = S * bL[:, :, n, 0, :, None].exp() + U[:, :, n]
    o = (qc * b.exp()) @ torch.stack(states, 2)  # inter-chunk: [B, H, nC, C, V]
    # keys in earlier sub-chunks, both factors relative to r_I (the gate just before sub-chunk I)
    bs = b.reshape(B, H, nC, nS, c, K)
    r = bs[:, :, :, :, :1] - gc.reshape(B, H, nC, nS, c, K)[:, :, :, :, :1]  # [B, H, nC, nS, 1, K]
    qs = qc.reshape(B, H, nC, nS, c, K) * (bs - r).exp()  # exponent <= 0
    earlier = (torch.arange(C, device=q.device)[None, :] < (torch.arange(nS, device=q.device) * c)[:, None])  # [nS, C]
    m = earlier[None, None, None, :, :, None]
    kExp = torch.where(m, r - b[:, :, :, None], torch.zeros((), device=q.device))  # r_I - b_j <= 0 where kept
    ks = kc[:, :, :, None] * kExp.exp() * m  # [B, H, nC, nS, C, K]
    o = o + ((qs @ ks.transpose(-1, -2)).reshape(B, H, nC, C, C) @ vc)
    # keys in the query's own sub-chunk: exp(b_i - b_j) per channel
    tri = torch.tril(torch.ones(c, c, device=q.device, dtype=torch.bool))[:, :, None]  # [c, c, 1]
    d = torch.where(tri, bs[..., :, None, :] - bs[..., None, :, :], torch.zeros((), device=q.device))  # [.., c, c, K]
    A = (qc.reshape(B, H, nC, nS, c, 1, K) * kc.reshape(B, H, nC, nS, 1, c, K) * d.exp() * tri).sum(-1)  # [.., c, c]
    o = o + (A @ vc.reshape(B, H, nC, nS, c, V)).reshape(B, H, nC, C, V)
    return o.reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2)  # [B, T, H, V]


def delta_chunk(q, k, v, beta, g, scale, C=64):
    """Chunked DeltaNet (g None) or Gated DeltaNet, the WY/UT form of @tsformer/ops deltaChunk's
    composite (packages/ops/src/delta/README.md): q, k [B, T, H, K], v [B, T, H, V], beta, g [B, T, H]
    -> o [B, T, H, V], final state [B, H, K, V]. A unit-triangular solve per chunk, then a Python loop
    over chunks for the state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(C, T)
    nC = -(-T // C)
    Tp = nC * C  # padding: beta = 0, k = 0, g = 0 (inert updates), outputs dropped

    def chunks(x):  # [B, T, H, X] -> [B, H, nC, C, X], zero padded at the end
        x = F.pad(x, (0, 0, 0, 0, 0, Tp - T))
        return x.transpose(1, 2).reshape(B, H, nC, C, x.shape[-1])

    qc, kc, vc = chunks(q) * scale, chunks(k), chunks(v)
    bc = chunks(beta[..., None])  # [B, H, nC, C, 1]
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    if g is not None:
        G = chunks(g[..., None])[..., 0].cumsum(-1)  # [B, H, nC, C]
        # exp(G_r - G_i) for i <= r; the exponent is masked first, so the upper triangle is exp(0)
        decay = (G[..., :, None] - G[..., None, :]).masked_fill(~lower, 0).exp().masked_fill(~lower, 0)  # [B, H, nC, C, C]
        gamma, to_end, last = G.exp()[..., None], (G[..., -1:] - G).exp()[..., None], G[..., -1].exp()
        gk, k_write = kc * gamma, kc * to_end
        q_read = qc * gamma
    else:
        decay, gk, k_write, q_read, last = lower.to(q.dtype), kc, kc, qc, None
    A = (bc * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~strict, 0) + torch.eye(C, device=q.device, dtype=q.dtype)
    Tm = torch.linalg.solve_triangular(A, torch.diag_embed(bc[..., 0]), upper=False, unitriangular=True)  # A^-1 diag(beta)
    w, u_tilde = Tm @ gk, Tm @ vc  # [B, H, nC, C, K], [B, H, nC, C, V]
    attn = ((qc @ kc.transpose(-1, -2)) * decay).masked_fill(~lower, 0)  # [B, H, nC, C, C]
    S = q.new_zeros(B, H, K, V)
    out = []
    for n in range(nC):
        u = u_tilde[:, :, n] - w[:, :, n] @ S  # [B, H, C, V]
        out.append(q_read[:, :, n] @ S + attn[:, :, n] @ u)
        S = (S * last[:, :, n, None, None] if last is not None else S) + k_write[:, :, n].transpose(-1, -2) @ u
    return torch.stack(out, 2).reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2), S  # [B, T, H, V]


def delta_recurrent(q, k, v, beta, g, scale):
    """The recurrence token by token (the spec): S = exp(g_t) S; S += k_t (beta_t (v_t - S^T k_t))^T."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].exp()[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum('bhkv,bhk->bhv', S, k[:, t]))
        S = S + k[:, t][..., None] * u[..., None, :]
        out.append(scale * torch.einsum('bhkv,bhk->bhv', S, q[:, t]))
    return torch.stack(out, 1), S


def timed(fn, sync, reps_budget_s=2.0):
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    reps = max(1, min(20, int(reps_budget_s / max(one, 1e-6))))
    t1 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t1) / reps * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--T', default='1024,4096')
    ap.add_argument('--B', type=int, default=4)
    ap.add_argument('--H', type=int, default=8)
    ap.add_argument('--D', type=int, default=64)
    ap.add_argument('--budget', type=float, default=2.0)
    ap.add_argument('--check', action='store_true')
    a = ap.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
    if a.check:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 150, 3, 16, generator=gen, dtype=torch.float64) for _ in range(3))
        g = -5 * torch.rand(2, 150, 3, 16, generator=gen, dtype=torch.float64)
        err = (gla_chunk(q, k, v, g, 0.25) - gla_recurrent(q, k, v, g, 0.25)).norm() / gla_recurrent(q, k, v, g, 0.25).norm()
        print(f'check: chunked vs recurrent relative error {err.item():.2e}', file=sys.stderr)
        for gated in (False, True):
            q, k = (F.normalize(torch.randn(2, 150, 3, 16, generator=gen, dtype=torch.float64), dim=-1) for _ in range(2))
            v = torch.randn(2, 150, 3, 8, generator=gen, dtype=torch.float64)
            beta = torch.rand(2, 150, 3, generator=gen, dtype=torch.float64)
            gd = -torch.rand(2, 150, 3, generator=gen, dtype=torch.float64) if gated else None
            (o1, s1), (o2, s2) = delta_chunk(q, k, v, beta, gd, 0.25), delta_recurrent(q, k, v, beta, gd, 0.25)
            err = max(((o1 - o2).norm() / o2.norm()).item(), ((s1 - s2).norm() / s2.norm()).item())
            print(f'check: {"gated " if gated else ""}deltanet chunked vs recurrent relative error {err:.2e}', file=sys.stderr)
    B, H, D = a.B, a.H, a.D
    for T in [int(t) for t in a.T.split(',')]:
        row = {'kind': 'gla', 'T': T, 'B': B, 'H': H, 'D': D, 'device': dev}
        try:
            q, k, v = (torch.randn(B, T, H, D, device=dev) for _ in range(3))
            g = F.logsigmoid(torch.randn(B, T, H, D, device=dev)) / 16
            dO = torch.randn(B, T, H, D, device=dev)
            with torch.no_grad():
                row['fwd_ms'] = timed(lambda: gla_chunk(q, k, v, g, D ** -0.5), sync, a.budget)
            xs = [x.clone().requires_grad_() for x in (q, k, v, g)]

            def fwdbwd():
                o = gla_chunk(*xs, D ** -0.5)
                torch.autograd.grad(o, xs, dO)

            row['fwdbwd_ms'] = timed(fwdbwd, sync, a.budget)
            del q, k, v, g, dO, xs
        except Exception as e:  # noqa: BLE001 (report, go on with the next size)
            row['error'] = str(e)[:200]
        if dev == 'cuda':
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
    for T in [int(t) for t in a.T.split(',')]:
        for kind in ('deltanet', 'gated-deltanet'):
            row = {'kind': kind, 'T': T, 'B': B, 'H': H, 'D': D, 'device': dev}
            try:
                q, k = (F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1) for _ in range(2))
                v, dO = torch.randn(B, T, H, D, device=dev), torch.randn(B, T, H, D, device=dev)
                beta = torch.randn(B, T, H, device=dev).sigmoid()
                g = F.logsigmoid(torch.randn(B, T, H, device=dev)) / 16 if kind == 'gated-deltanet' else None
                with torch.no_grad():
                    row['fwd_ms'] = timed(lambda: delta_chunk(q, k, v, beta, g, D ** -0.5), sync, a.budget)
                xs = [x.clone().requires_grad_() for x in (q, k, v, beta, g) if x is not None]

                def fwdbwd():
                    o, _ = delta_chunk(*xs[:4], xs[4] if len(xs) > 4 else None, D ** -0.5)
                    torch.autograd.grad(o, xs, dO)

                row['fwdbwd_ms'] = timed(fwdbwd, sync, a.budget)
                del q, k, v, beta, g, dO, xs
            except Exception as e:  # noqa: BLE001 (report, go on with the next size)
                row['error'] = str(e)[:200]
            if dev == 'cuda':
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
