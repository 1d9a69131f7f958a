"""The pure-Python specification of the Elman RNN (DESIGN.md §1).

Standard library only: nested lists of Python floats, ``math.tanh``,
``math.exp``, ``math.log``.  It is slow on purpose and reads like the
textbook, so that the compiled model can be held against it and the oracle
itself against central finite differences and an independent autodiff.

Letters (DESIGN.md §2): T time steps, B batch, D input size, H hidden size,
K classes.  Everything is time-major: ``x[t][n]``, ``h[t][n][j]``.  For each
sequence n and each step t < lengths[n]::

    a_t = U x_t + W h_{t-1} + b                       eq. (1)
    h_t = tanh(a_t)            (or max(0, a_t))       eq. (1)
    z_t = V h_t + c,  ŷ_t = softmax(z_t)              eq. (2)
    L_t = -y_t · log ŷ_t,      L = Σ_t Σ_n L_t        eq. (3)

and backpropagation through time::

    dz_t = ŷ_t Σ_k y_tk - y_t       (= ŷ_t - y_t when y_t sums to 1)
    dV = Σ_t dz_t ⊗ h_t,  dc = Σ_t dz_t               eq. (4)
    δ_t = f'(a_t) ⊙ (Vᵀ dz_t + Wᵀ δ_{t+1}),  δ_T = 0  eq. (5)
    dW = Σ_t δ_t ⊗ h_{t-1},  dU = Σ_t δ_t ⊗ x_t,  db = Σ_t δ_t   eq. (6)
    dh0 = Wᵀ δ_0,  dx_t = Uᵀ δ_t                      eq. (7)

with f'(a) = 1 - tanh(a)² for tanh and [a > 0] for relu.

Variable-length batches follow packed-sequence semantics: for
t >= lengths[n] the recurrence has stopped for sequence n, ``h[t][n]`` is all
zeros, ``h_last[n]`` is the state at step lengths[n] - 1, the output there is
softmax(V·0 + c) and its target counts nothing.

Inputs may be nested lists or anything that indexes like them (NumPy arrays
work too); outputs are nested lists of Python floats.
"""

import math
import operator

__all__ = ["forward", "loss", "loss_and_grad", "grad_V"]

NONLINEARITIES = ("tanh", "relu")
REDUCTIONS = ("sum", "mean")


# --- small linear algebra on lists --------------------------------------------


def _dot(u, v):
    """u · v, correctly rounded (math.fsum), so the oracle adds no error of its own."""
    return math.fsum(ui * vi for ui, vi in zip(u, v))


def _matvec(M, v):
    """M v for M of shape [m][n], v of shape [n] -> [m]."""
    return [_dot(row, v) for row in M]


def _matvec_T(M, v):
    """Mᵀ v for M of shape [m][n], v of shape [m] -> [n]."""
    return [_dot(col, v) for col in zip(*M)]


def _add(*vectors):
    """Element-wise sum of equally long vectors; None stands for an absent bias."""
    present = [v for v in vectors if v is not None]
    return [math.fsum(parts) for parts in zip(*present)]


def _add_outer(G, u, v):
    """G += u ⊗ v, in place."""
    for i, ui in enumerate(u):
        row = G[i]
        for j, vj in enumerate(v):
            row[j] += ui * vj


def _zeros(*shape):
    if len(shape) == 1:
        return [0.0] * shape[0]
    return [_zeros(*shape[1:]) for _ in range(shape[0])]


def _log_softmax(z):
    """log softmax(z).  Subtracting max(z) changes nothing mathematically
    (softmax is shift-invariant); it only keeps exp from overflowing."""
    m = max(z)
    log_sum = math.log(math.fsum(math.exp(zk - m) for zk in z))
    return [zk - m - log_sum for zk in z]


def _softmax(z):
    return [math.exp(lk) for lk in _log_softmax(z)]


# --- input handling -------------------------------------------------------------


def _matrix(name, M, rows, cols):
    M = [[float(v) for v in row] for row in M]
    if len(M) != rows or any(len(row) != cols for row in M):
        raise ValueError(f"{name} must have shape [{rows}][{cols}]")
    return M


def _vector(name, v, size):
    if v is None:
        return None
    v = [float(e) for e in v]
    if len(v) != size:
        raise ValueError(f"{name} must have length {size}, got {len(v)}")
    return v


def _is_rows(a):
    """True when a[0][0] is itself a sequence (float rows), False for scalars (ids)."""
    return hasattr(a[0][0], "__len__")


def _prepare(U, W, V, b, c, x, h0, lengths, nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    H, D = len(U), len(U[0])
    K = len(V)
    U = _matrix("U", U, H, D)
    W = _matrix("W", W, H, H)
    V = _matrix("V", V, K, H)
    b = _vector("b", b, H)
    c = _vector("c", c, K)
    T, B = len(x), len(x[0])
    if T < 1 or B < 1:
        raise ValueError("x must have at least one time step and one sequence")
    ids = not _is_rows(x)
    if ids:
        x = [[operator.index(i) for i in row] for row in x]
        if any(len(row) != B for row in x):
            raise ValueError(f"x must have shape [{T}][{B}]")
        if any(not 0 <= i < D for row in x for i in row):
            raise ValueError(f"input ids must lie in [0, {D})")
    else:
        x = [_matrix(f"x[{t}]", row, B, D) for t, row in enumerate(x)]
    h0 = _zeros(B, H) if h0 is None else _matrix("h0", h0, B, H)
    if lengths is None:
        lengths = [T] * B
    else:
        lengths = [operator.index(n) for n in lengths]
        if len(lengths) != B or any(not 1 <= n <= T for n in lengths):
            raise ValueError(f"lengths must be {B} ints in [1, {T}], got {lengths}")
    return U, W, V, b, c, x, ids, h0, lengths


def _prepare_targets(y, T, B, K, ignore_index):
    """Return (y, soft): ids [T][B] or float rows [T][B][K]."""
    if len(y) != T or any(len(row) != B for row in y):
        raise ValueError(f"y must have shape [{T}][{B}] (ids) or [{T}][{B}][{K}] (rows)")
    if _is_rows(y):
        return [_matrix(f"y[{t}]", row, B, K) for t, row in enumerate(y)], True
    y = [[operator.index(k) for k in row] for row in y]
    if any(not (0 <= k < K or k == ignore_index) for row in y for k in row):
        raise ValueError(f"target ids must lie in [0, {K}) or equal ignore_index={ignore_index}")
    return y, False


# --- forward and backward ---------------------------------------------------------


def _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity):
    """Run eqs. (1)-(2); return the activations backward needs.

    a, h are [T][B][H]; z is [T][B][K]; padded steps hold h = 0 (a = 0 too)."""
    T, B, H = len(x), len(x[0]), len(W)
    a = _zeros(T, B, H)
    h = _zeros(T, B, H)
    z = _zeros(T, B, len(V))
    for t in range(T):
        for n in range(B):
            if t < lengths[n]:
                h_prev = h0[n] if t == 0 else h[t - 1][n]
                Ux = [row[x[t][n]] for row in U] if ids else _matvec(U, x[t][n])
                a[t][n] = _add(Ux, _matvec(W, h_prev), b)  # eq. (1)
                if nonlinearity == "tanh":
                    h[t][n] = [math.tanh(aj) for aj in a[t][n]]  # eq. (1)
                else:
                    h[t][n] = [max(0.0, aj) for aj in a[t][n]]  # eq. (1)
            z[t][n] = _add(_matvec(V, h[t][n]), c)  # eq. (2); at padded steps V·0 + c
    return {"a": a, "h": h, "z": z}


def _rnn_backward(U, W, V, x, ids, h0, lengths, nonlinearity, acts, dz):
    """BPTT, eqs. (4)-(7), given dz = ∂L/∂z of shape [T][B][K].

    Returns fresh (overwritten, not accumulated) dU, dW, dV, db, dc, dh0, dx."""
    a, h = acts["a"], acts["h"]
    T, B, H, D, K = len(x), len(x[0]), len(W), len(U[0]), len(V)
    dU, dW, dV = _zeros(H, D), _zeros(H, H), _zeros(K, H)
    db, dc = _zeros(H), _zeros(K)
    dx = None if ids else _zeros(T, B, D)
    delta_next = _zeros(B, H)  # δ_T = 0
    for t in reversed(range(T)):
        for n in range(B):
            if t >= lengths[n]:
                continue  # the recurrence has stopped: h_t is a constant 0 and δ_t = 0
            h_prev = h0[n] if t == 0 else h[t - 1][n]
            _add_outer(dV, dz[t][n], h[t][n])  # eq. (4)
            dc = _add(dc, dz[t][n])  # eq. (4)
            dh = _add(_matvec_T(V, dz[t][n]), _matvec_T(W, delta_next[n]))  # eq. (5)
            if nonlinearity == "tanh":
                # forward: h = tanh(a)  ->  da = (1 - h*h) * dh
                delta = [(1.0 - hj * hj) * dhj for hj, dhj in zip(h[t][n], dh)]  # eq. (5)
            else:
                # forward: h = max(0, a)  ->  da = [a > 0] * dh
                delta = [dhj if aj > 0.0 else 0.0 for aj, dhj in zip(a[t][n], dh)]  # eq. (5)
            _add_outer(dW, delta, h_prev)  # eq. (6)
            if ids:
                for j in range(H):
                    dU[j][x[t][n]] += delta[j]  # eq. (6), x_t = e_i: only column i
            else:
                _add_outer(dU, delta, x[t][n])  # eq. (6)
            db = _add(db, delta)  # eq. (6)
            if dx is not None:
                dx[t][n] = _matvec_T(U, delta)  # eq. (7)
            delta_next[n] = delta
    dh0 = [_matvec_T(W, delta_next[n]) for n in range(B)]  # eq. (7), delta_next is now δ_0
    return dU, dW, dV, db, dc, dh0, dx


def _cross_entropy(z, y, soft, lengths, reduction, ignore_index):
    """Eq. (3) and its gradient: return (loss, dz [T][B][K]).

    Only rows with t < lengths[n] (and, for ids, y != ignore_index) count;
    dz is zero on the others.  "mean" divides by the number of counted rows,
    and by nothing when no row counts (the loss and dz are then 0)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    T, B, K = len(z), len(z[0]), len(z[0][0])
    terms = []
    dz = _zeros(T, B, K)
    for t in range(T):
        for n in range(B):
            if t >= lengths[n] or (not soft and y[t][n] == ignore_index):
                continue
            log_p = _log_softmax(z[t][n])
            y_row = y[t][n] if soft else [1.0 if k == y[t][n] else 0.0 for k in range(K)]
            terms.append(-_dot(y_row, log_p))  # eq. (3)
            # ∂L_t/∂z = ŷ Σ_k y_k - y  (= ŷ - y for a row that sums to 1)
            y_sum = math.fsum(y_row)
            dz[t][n] = [math.exp(lk) * y_sum - yk for lk, yk in zip(log_p, y_row)]
    total = math.fsum(terms)
    if reduction == "mean":
        scale = 1.0 / len(terms) if terms else 0.0
        total *= scale
        dz = [[[scale * g for g in row] for row in step] for step in dz]
    return total, dz


# --- public functions ---------------------------------------------------------------


def forward(U, W, V, b, c, x, h0=None, lengths=None, nonlinearity="tanh"):
    """Forward pass, eqs. (1)-(2).

    Parameters
    ----------
    U : [H][D] floats;  W : [H][H];  V : [K][H]
    b : [H] or None;  c : [K] or None   (None: no bias)
    x : [T][B] int ids (id i stands for the one-hot e_i) or [T][B][D] floats
    h0 : [B][H] or None (zeros)
    lengths : [B] ints in 1..T, or None (every sequence has T steps)
    nonlinearity : "tanh" or "relu"

    Returns
    -------
    dict with
        h : [T][B][H], zero for t >= lengths[n]
        probs : [T][B][K] softmax(z_t); softmax(c) (uniform without c) at padded steps
        h_last : [B][H], h[lengths[n] - 1][n]

    Equivalent to, for each sequence n::

        h = h0[n]
        for t in range(lengths[n]):
            h = tanh(U @ x[t][n] + W @ h + b)
            probs[t][n] = softmax(V @ h + c)
    """
    U, W, V, b, c, x, ids, h0, lengths = _prepare(U, W, V, b, c, x, h0, lengths, nonlinearity)
    acts = _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity)
    h = acts["h"]
    return {
        "h": h,
        "probs": [[_softmax(z_tn) for z_tn in z_t] for z_t in acts["z"]],
        "h_last": [list(h[lengths[n] - 1][n]) for n in range(len(lengths))],
    }


def loss_and_grad(
    U, W, V, b, c, x, y, h0=None, lengths=None, nonlinearity="tanh",
    reduction="sum", ignore_index=-100,
):
    """Loss, eq. (3), and its exact gradient by BPTT, eqs. (4)-(7).

    Parameters are those of :func:`forward`, plus

    y : [T][B] int class ids (entries equal to ignore_index count nothing) or
        [T][B][K] float rows (soft targets, L_t = -Σ_k y_k log ŷ_k).
        Rows at t >= lengths[n] count nothing.
    reduction : "sum" (eq. (3)) or "mean" (the sum divided by the number of
        counted rows; 0 when none counts)
    ignore_index : int

    Returns
    -------
    loss : float
    grads : dict
        "U" [H][D], "W" [H][H], "V" [K][H], "b" [H] or None, "c" [K] or None,
        "h0" [B][H] (also when h0 was None: the gradient at zeros),
        "x" [T][B][D] for float input, None for ids,
        "h_last" [B][H]: the final hidden state (a value, not a gradient).
    """
    U, W, V, b, c, x, ids, h0, lengths = _prepare(U, W, V, b, c, x, h0, lengths, nonlinearity)
    T, B, K = len(x), len(x[0]), len(V)
    y, soft = _prepare_targets(y, T, B, K, ignore_index)
    acts = _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity)
    total, dz = _cross_entropy(acts["z"], y, soft, lengths, reduction, ignore_index)
    dU, dW, dV, db, dc, dh0, dx = _rnn_backward(
        U, W, V, x, ids, h0, lengths, nonlinearity, acts, dz
    )
    grads = {
        "U": dU,
        "W": dW,
        "V": dV,
        "b": db if b is not None else None,
        "c": dc if c is not None else None,
        "h0": dh0,
        "x": dx,
        "h_last": [list(acts["h"][lengths[n] - 1][n]) for n in range(B)],
    }
    return total, grads


def loss(
    U, W, V, b, c, x, y, h0=None, lengths=None, nonlinearity="tanh",
    reduction="sum", ignore_index=-100,
):
    """The loss of :func:`loss_and_grad` alone (forward only), eq. (3)."""
    U, W, V, b, c, x, ids, h0, lengths = _prepare(U, W, V, b, c, x, h0, lengths, nonlinearity)
    y, soft = _prepare_targets(y, len(x), len(x[0]), len(V), ignore_index)
    acts = _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity)
    return _cross_entropy(acts["z"], y, soft, lengths, reduction, ignore_index)[0]


def grad_V(
    U, W, V, b, c, x, y, h0=None, lengths=None, nonlinearity="tanh",
    reduction="sum", ignore_index=-100,
):
    """The loss and eq. (4) alone: ``(loss, dV [K][H], dc [K] or None)``.

    dV = Σ_t (ŷ_t - y_t) ⊗ h_t,  dc = Σ_t (ŷ_t - y_t), over the counted rows
    (scaled by 1/count for reduction="mean")."""
    U, W, V, b, c, x, ids, h0, lengths = _prepare(U, W, V, b, c, x, h0, lengths, nonlinearity)
    T, B, H, K = len(x), len(x[0]), len(W), len(V)
    y, soft = _prepare_targets(y, T, B, K, ignore_index)
    acts = _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity)
    total, dz = _cross_entropy(acts["z"], y, soft, lengths, reduction, ignore_index)
    dV, dc = _zeros(K, H), _zeros(K)
    for t in reversed(range(T)):  # the order BPTT adds in, so both give the same dV
        for n in range(B):
            _add_outer(dV, dz[t][n], acts["h"][t][n])  # eq. (4)
            dc = _add(dc, dz[t][n])  # eq. (4)
    return total, dV, (dc if c is not None else None)
