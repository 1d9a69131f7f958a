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

Stacked and bidirectional layers (DESIGN.md §6, :func:`recurrent_forward`,
:func:`recurrent_backward`) apply eq. (1) per layer k and direction, with
h^0_t = x_t and the layer below's output as the input of the next::

    h^k_t = f(U_k i^k_t + W_k h^k_{t-1} + b_k)   forward, t = 0 … len-1
    h^k_t = f(U_k i^k_t + W_k h^k_{t+1} + b_k)   reverse, t = len-1 … 0 (from h0)
    output^k_t = [h^k_t(forward), h^k_t(reverse)],   i^{k+1}_t = m^k_t ⊙ output^k_t

where m^k are given dropout masks (1 without dropout).  The heads
(:func:`softmax_head`, :func:`linear_head`) are eqs. (2)-(4) and the mean
squared error on any features, per step or per sequence.

Inputs may be nested lists or anything that indexes like them (NumPy arrays
work too); outputs are nested lists of Python floats.
"""

import math
import operator

__all__ = [
    "forward", "loss", "loss_and_grad", "grad_V",
    "recurrent_forward", "recurrent_backward",
    "softmax_head_forward", "softmax_head", "linear_head_forward", "linear_head",
]

NONLINEARITIES = ("tanh", "relu")
REDUCTIONS = ("sum", "mean")
SUFFIXES = ("", "_reverse")  # forward, reverse direction (PyTorch's names)


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
    x, ids = _prepare_input(x, D)
    T, B = len(x), len(x[0])
    h0 = _zeros(B, H) if h0 is None else _matrix("h0", h0, B, H)
    lengths = _prepare_lengths(lengths, T, B)
    return U, W, V, b, c, x, ids, h0, lengths


def _prepare_input(x, D):
    """Return (x, ids): int ids [T][B] in [0, D), or float rows [T][B][D]."""
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
    return x, ids


def _prepare_lengths(lengths, T, B):
    """[B] ints in [1, T]; None stands for T each."""
    if lengths is None:
        return [T] * B
    lengths = [operator.index(n) for n in lengths]
    if len(lengths) != B or any(not 1 <= n <= T for n in lengths):
        raise ValueError(f"lengths must be {B} ints in [1, {T}], got {lengths}")
    return lengths


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


def _direction_forward(U, W, b, x, ids, h0, lengths, nonlinearity, reverse=False):
    """Eq. (1) for one layer and one direction: return a, h, both [T][B][H].

    The forward direction runs t = 0 … lengths[n]-1 and the reverse direction
    t = lengths[n]-1 … 0, each starting from h0[n]; padded steps hold
    a = h = 0."""
    T, B, H = len(x), len(x[0]), len(W)
    a = _zeros(T, B, H)
    h = _zeros(T, B, H)
    for t in reversed(range(T)) if reverse else range(T):
        for n in range(B):
            if t >= lengths[n]:
                continue
            first = lengths[n] - 1 if reverse else 0
            h_prev = h0[n] if t == first else h[t + 1 if reverse else t - 1][n]
            Ux = [row[x[t][n]] for row in U] if ids else _matvec(U, x[t][n])
            a[t][n] = _add(Ux, _matvec(W, h_prev), b)  # eq. (1)
            if nonlinearity == "tanh":
                h[t][n] = [math.tanh(aj) for aj in a[t][n]]  # eq. (1)
            else:
                h[t][n] = [max(0.0, aj) for aj in a[t][n]]  # eq. (1)
    return a, h


def _direction_backward(U, W, x, ids, h0, lengths, nonlinearity, a, h, dh_up, dh_n,
                        reverse=False):
    """BPTT through one layer and one direction, eqs. (5)-(7).

    dh_up [T][B][H] is ∂L/∂h_t from outside the recurrence (the output layer
    or the layer above); it is read at steps t < lengths[n] only.  dh_n [B][H]
    is ∂L/∂ of each sequence's final state (t = lengths[n]-1 forward, t = 0
    reverse).  Returns fresh (overwritten, not accumulated) dU, dW, db, dx
    ([T][B][D], None for ids) and dh0 [B][H]."""
    T, B, H, D = len(x), len(x[0]), len(W), len(U[0])
    dU, dW, db = _zeros(H, D), _zeros(H, H), _zeros(H)
    dx = None if ids else _zeros(T, B, D)
    # ∂L/∂h_t through the recurrence, Wᵀ δ of the step run after t; before
    # any step has run, the gradient at the final state
    dh_next = [list(row) for row in dh_n]
    for t in range(T) if reverse else reversed(range(T)):
        for n in range(B):
            if t >= lengths[n]:
                continue  # the recurrence has stopped: h_t is a constant 0 and δ_t = 0
            first = lengths[n] - 1 if reverse else 0
            h_prev = h0[n] if t == first else h[t + 1 if reverse else t - 1][n]
            dh = _add(dh_up[t][n], dh_next[n])  # eq. (5)
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
            dh_next[n] = _matvec_T(W, delta)  # eq. (5), the Wᵀ δ_t of the step run next
    return dU, dW, db, dx, dh_next  # dh_next is now dh0 = Wᵀ δ of the first step, eq. (7)


def _output_layer(V, c, h):
    """Eq. (2) before the softmax, at every step: z_t = V h_t + c, [T][B][K]."""
    return [[_add(_matvec(V, h_tn), c) for h_tn in h_t] for h_t in h]


def _output_layer_backward(V, h, dz, lengths):
    """Eq. (4) and the output's share of eq. (5), over steps t < lengths[n].

    Returns fresh dV [K][H], dc [K] and dh = Vᵀ dz [T][B][H] (zero at padded steps)."""
    T, B, H, K = len(h), len(h[0]), len(V[0]), len(V)
    dV, dc = _zeros(K, H), _zeros(K)
    dh = _zeros(T, B, H)
    for t in reversed(range(T)):
        for n in range(B):
            if t >= lengths[n]:
                continue
            _add_outer(dV, dz[t][n], h[t][n])  # eq. (4)
            dc = _add(dc, dz[t][n])  # eq. (4)
            dh[t][n] = _matvec_T(V, dz[t][n])  # eq. (5), Vᵀ dz_t
    return dV, dc, dh


def _rnn_forward(U, W, V, b, c, x, ids, h0, lengths, nonlinearity):
    """Run eqs. (1)-(2); return the activations backward needs.

    a, h are [T][B][H]; z is [T][B][K]; padded steps hold h = 0 (a = 0 too)."""
    a, h = _direction_forward(U, W, b, x, ids, h0, lengths, nonlinearity)
    return {"a": a, "h": h, "z": _output_layer(V, c, h)}  # eq. (2); at padded steps V·0 + c


def _rnn_backward(U, W, V, x, ids, h0, lengths, nonlinearity, acts, dz):
    """BPTT, eqs. (4)-(7), given dz = ∂L/∂z of shape [T][B][K].

    Returns fresh (overwritten, not accumulated) dU, dW, dV, db, dc, dh0, dx."""
    B, H = len(x[0]), len(W)
    dV, dc, dh = _output_layer_backward(V, acts["h"], dz, lengths)
    dU, dW, db, dx, dh0 = _direction_backward(
        U, W, x, ids, h0, lengths, nonlinearity, acts["a"], acts["h"], dh, _zeros(B, H)
    )
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


# --- stacked, bidirectional layers (DESIGN.md §6) ---------------------------------------


def _prepare_layers(params, x, h0, lengths, masks, num_layers, bidirectional, nonlinearity):
    """Check and convert the arguments of recurrent_forward / recurrent_backward.

    Returns (layers, x, ids, h0, lengths, masks) with layers[k][d] = (U, W, b)
    for layer k and direction d (0 forward, 1 reverse), h0 [L*dirs][B][H] and
    masks None or [L-1][T][B][dirs*H]."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    num_layers = operator.index(num_layers)
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    if not isinstance(bidirectional, bool):
        raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
    dirs = 2 if bidirectional else 1
    for name in ("U_l0", "W_l0"):
        if name not in params:
            raise ValueError(f"params must hold {name!r}, got names {sorted(params)}")
    H, D = len(params["W_l0"]), len(params["U_l0"][0])
    bias = params.get("b_l0") is not None
    layers = []
    for k in range(num_layers):
        directions = []
        for suffix in SUFFIXES[:dirs]:
            names = [f"U_l{k}{suffix}", f"W_l{k}{suffix}", f"b_l{k}{suffix}"]
            missing = [name for name in names[: 3 if bias else 2] if params.get(name) is None]
            if missing:
                raise ValueError(f"params must hold {missing}, got names {sorted(params)}")
            if not bias and params.get(names[2]) is not None:
                raise ValueError(f"{names[2]!r} given but 'b_l0' is not: all biases or none")
            U = _matrix(names[0], params[names[0]], H, D if k == 0 else dirs * H)
            W = _matrix(names[1], params[names[1]], H, H)
            b = _vector(names[2], params.get(names[2]), H)
            directions.append((U, W, b))
        layers.append(directions)
    x, ids = _prepare_input(x, D)
    T, B = len(x), len(x[0])
    if h0 is None:
        h0 = _zeros(num_layers * dirs, B, H)
    else:
        if len(h0) != num_layers * dirs:
            raise ValueError(f"h0 must have shape [{num_layers * dirs}][{B}][{H}], got {len(h0)} rows")
        h0 = [_matrix(f"h0[{i}]", h0_i, B, H) for i, h0_i in enumerate(h0)]
    lengths = _prepare_lengths(lengths, T, B)
    if masks is not None:
        if len(masks) != num_layers - 1:
            raise ValueError(f"masks must hold num_layers - 1 = {num_layers - 1} arrays, got {len(masks)}")
        masks = [
            [_matrix(f"masks[{k}][{t}]", m_t, B, dirs * H) for t, m_t in enumerate(m)]
            for k, m in enumerate(masks)
        ]
        if any(len(m) != T for m in masks):
            raise ValueError(f"each mask must have shape [{T}][{B}][{dirs * H}]")
    return layers, x, ids, h0, lengths, masks


def _layers_forward(layers, x, ids, h0, lengths, masks, nonlinearity):
    """Eq. (1) through every layer and direction, bottom to top.

    Returns one dict per layer: "input" (what its U multiplies: x for layer 0,
    the masked output of the layer below otherwise), "a" and "h" (one [T][B][H]
    per direction) and "output" [T][B][dirs*H]."""
    dirs = len(layers[0])
    acts = []
    inp, inp_ids = x, ids
    for k, directions in enumerate(layers):
        if k > 0:
            below, m = acts[k - 1]["output"], masks[k - 1] if masks is not None else None
            # dropout between layers: i^k_t = m^{k-1}_t ⊙ output^{k-1}_t
            inp = below if m is None else [
                [[mj * oj for mj, oj in zip(m[t][n], o_tn)] for n, o_tn in enumerate(o_t)]
                for t, o_t in enumerate(below)
            ]
            inp_ids = False
        a, h = [], []
        for d, (U, W, b) in enumerate(directions):
            a_d, h_d = _direction_forward(
                U, W, b, inp, inp_ids, h0[k * dirs + d], lengths, nonlinearity, reverse=d == 1
            )
            a.append(a_d)
            h.append(h_d)
        # output_t = [h_t(forward), h_t(reverse)]
        output = [
            [[hj for h_d in h for hj in h_d[t][n]] for n in range(len(lengths))]
            for t in range(len(inp))
        ]
        acts.append({"input": inp, "ids": inp_ids, "a": a, "h": h, "output": output})
    return acts


def _final_states(acts, lengths):
    """h_n [L*dirs][B][H]: h_{len-1} of the forward direction, h_0 of the reverse."""
    return [
        [list(h_d[lengths[n] - 1 if d == 0 else 0][n]) for n in range(len(lengths))]
        for layer in acts
        for d, h_d in enumerate(layer["h"])
    ]


def _layers_backward(layers, h0, lengths, masks, nonlinearity, acts, d_output, d_h_n):
    """BPTT through every layer and direction, top to bottom.

    d_output [T][B][dirs*H] is ∂L/∂output of the top layer, d_h_n [L*dirs][B][H]
    ∂L/∂h_n; both are read at valid steps only.  Returns fresh
    (grads [L][dirs] of (dU, dW, db), dx or None for ids, dh0 [L*dirs][B][H])."""
    dirs, H = len(layers[0]), len(layers[0][0][1])
    grads = [None] * len(layers)
    dh0 = [None] * (len(layers) * dirs)
    d_out = d_output  # ∂L/∂output of layer k
    for k in reversed(range(len(layers))):
        layer, d_inp = acts[k], None
        grads[k] = []
        for d, (U, W, _) in enumerate(layers[k]):
            # output_t = [h_t(forward), h_t(reverse)]  ->  each direction gets its half
            dh_up = [[row[d * H:(d + 1) * H] for row in d_out_t] for d_out_t in d_out]
            dU, dW, db, dx_d, dh0[k * dirs + d] = _direction_backward(
                U, W, layer["input"], layer["ids"], h0[k * dirs + d], lengths, nonlinearity,
                layer["a"][d], layer["h"][d], dh_up, d_h_n[k * dirs + d], reverse=d == 1,
            )
            grads[k].append((dU, dW, db))
            # the input feeds both directions: its gradient is the sum of theirs
            d_inp = dx_d if d_inp is None else [
                [_add(u, v) for u, v in zip(d_t, dx_t)] for d_t, dx_t in zip(d_inp, dx_d)
            ]
        if k > 0:
            m = masks[k - 1] if masks is not None else None
            # forward: i^k_t = m^{k-1}_t ⊙ output^{k-1}_t  ->  d output^{k-1}_t = m ⊙ d i^k_t
            d_out = d_inp if m is None else [
                [[mj * gj for mj, gj in zip(m[t][n], g_tn)] for n, g_tn in enumerate(g_t)]
                for t, g_t in enumerate(d_inp)
            ]
    return grads, d_inp, dh0


def recurrent_forward(params, x, *, num_layers, bidirectional, nonlinearity="tanh", h0=None,
                      lengths=None, masks=None):
    """A stacked, optionally bidirectional Elman layer, eq. (1) per layer and direction.

    Parameters
    ----------
    params : dict
        For k in range(num_layers) and suffix in ("", "_reverse")[:dirs]:
        ``U_l{k}{suffix}`` [H][D if k == 0 else dirs*H], ``W_l{k}{suffix}`` [H][H],
        ``b_l{k}{suffix}`` [H] (absent or None everywhere: no bias).  Other
        names (a head's V, c) are ignored.
    x : [T][B] int ids (id i stands for the one-hot e_i; layer 0's U_l0 has D
        columns, one per id) or [T][B][D] floats
    num_layers : int >= 1
    bidirectional : bool (dirs = 2 if True else 1)
    nonlinearity : "tanh" or "relu"
    h0 : [L*dirs][B][H], row k*dirs + d for layer k, direction d (PyTorch's
        order), or None (zeros)
    lengths : [B] ints in 1..T in any order, or None (every sequence has T steps)
    masks : None or L-1 arrays [T][B][dirs*H] of dropout multipliers; layer
        k >= 1 reads masks[k-1] ⊙ the output of layer k-1

    Returns
    -------
    output : [T][B][dirs*H], the top layer's [h_t(forward), h_t(reverse)],
        zero for t >= lengths[n]
    h_n : [L*dirs][B][H], each direction's final state: h_{lengths[n]-1}
        forward, h_0 reverse

    Equivalent to, for each sequence n (f = tanh or relu)::

        inp = x[:len, n]
        for k in range(L):
            h = h0[k*dirs]
            for t in range(len):
                h = f(U_lk @ inp[t] + W_lk @ h + b_lk);  fwd[t] = h
            h = h0[k*dirs + 1]
            for t in reversed(range(len)):
                h = f(U_lk_reverse @ inp[t] + W_lk_reverse @ h + b_lk_reverse);  rev[t] = h
            output = concatenate([fwd, rev], axis=-1)    # [fwd] alone when dirs == 1
            if k < L - 1:
                inp = masks[k][:len, n] * output
    """
    layers, x, ids, h0, lengths, masks = _prepare_layers(
        params, x, h0, lengths, masks, num_layers, bidirectional, nonlinearity
    )
    acts = _layers_forward(layers, x, ids, h0, lengths, masks, nonlinearity)
    return acts[-1]["output"], _final_states(acts, lengths)


def recurrent_backward(params, x, d_output=None, d_h_n=None, *, num_layers, bidirectional,
                       nonlinearity="tanh", h0=None, lengths=None, masks=None):
    """The exact gradient of any L(output, h_n) through :func:`recurrent_forward`.

    Given the upstream gradients d_output = ∂L/∂output and d_h_n = ∂L/∂h_n,
    BPTT (eqs. (5)-(7)) runs per layer from the top, each direction against
    its own time order::

        δ_t = f'(a_t) ⊙ (∂L/∂h_t from above + Wᵀ δ_{t±1})   (+ d_h_n at the final state)
        dW = Σ_t δ_t ⊗ h_{t∓1},  dU = Σ_t δ_t ⊗ i_t,  db = Σ_t δ_t
        dh0 = Wᵀ δ at the first step run (t = 0 forward, t = lengths[n]-1 reverse)
        ∂L/∂i_t = Σ_directions Uᵀ δ_t;  the layer below gets m ⊙ ∂L/∂i_t

    Parameters are those of :func:`recurrent_forward`, plus

    d_output : [T][B][dirs*H] or None (zeros); entries at t >= lengths[n]
        change nothing (the output there is a constant zero)
    d_h_n : [L*dirs][B][H] or None (zeros)

    Returns
    -------
    grads : dict, dL/dparam under each parameter's name (same shapes)
    dx : [T][B][D] for float input, None for ids
    dh0 : [L*dirs][B][H] (also when h0 was None: the gradient at zeros)
    """
    layers, x, ids, h0, lengths, masks = _prepare_layers(
        params, x, h0, lengths, masks, num_layers, bidirectional, nonlinearity
    )
    T, B, dirs, H = len(x), len(x[0]), len(layers[0]), len(layers[0][0][1])
    if d_output is None:
        d_output = _zeros(T, B, dirs * H)
    elif len(d_output) != T:
        raise ValueError(f"d_output must have shape [{T}][{B}][{dirs * H}], got {len(d_output)} steps")
    else:
        d_output = [_matrix(f"d_output[{t}]", d_t, B, dirs * H) for t, d_t in enumerate(d_output)]
    if d_h_n is None:
        d_h_n = _zeros(len(h0), B, H)
    elif len(d_h_n) != len(h0):
        raise ValueError(f"d_h_n must have shape [{len(h0)}][{B}][{H}], got {len(d_h_n)} rows")
    else:
        d_h_n = [_matrix(f"d_h_n[{i}]", d_i, B, H) for i, d_i in enumerate(d_h_n)]
    acts = _layers_forward(layers, x, ids, h0, lengths, masks, nonlinearity)
    layer_grads, dx, dh0 = _layers_backward(
        layers, h0, lengths, masks, nonlinearity, acts, d_output, d_h_n
    )
    grads = {}
    for k, directions in enumerate(layer_grads):
        for suffix, (dU, dW, db) in zip(SUFFIXES, directions):
            grads[f"U_l{k}{suffix}"] = dU
            grads[f"W_l{k}{suffix}"] = dW
            if layers[k][0][2] is not None:
                grads[f"b_l{k}{suffix}"] = db
    return grads, dx, dh0


# --- heads on any features ---------------------------------------------------------------


def _prepare_head(V, c, features, lengths):
    """Return (V, c, features [T][B][F], lengths, per_step).

    Features given per sequence, [B][F], become one step: [1][B][F]."""
    K, F = len(V), len(V[0])
    V = _matrix("V", V, K, F)
    c = _vector("c", c, K)
    per_step = _is_rows(features)
    if per_step:
        features = [_matrix(f"features[{t}]", f_t, len(features[0]), F) for t, f_t in enumerate(features)]
    else:
        if lengths is not None:
            raise ValueError("lengths must be None for features given per sequence, [B][F]")
        features = [_matrix("features", features, len(features), F)]
    T, B = len(features), len(features[0])
    if T < 1 or B < 1:
        raise ValueError("features must have at least one step and one sequence")
    return V, c, features, _prepare_lengths(lengths, T, B), per_step


def softmax_head_forward(V, c, features):
    """Eq. (2): probs = softmax(V f + c) for each feature row.

    features [T][B][F] (per step) or [B][F] (per sequence); V [K][F]; c [K]
    or None.  Returns probs shaped like features with F replaced by K."""
    V, c, features, _, per_step = _prepare_head(V, c, features, None)
    probs = [[_softmax(z_tn) for z_tn in z_t] for z_t in _output_layer(V, c, features)]
    return probs if per_step else probs[0]


def softmax_head(V, c, features, y, *, lengths=None, reduction="sum", ignore_index=-100):
    """Eqs. (2)-(4) on any features: the cross-entropy and its gradients.

    Parameters
    ----------
    V : [K][F];  c : [K] or None
    features : [T][B][F] per step, or [B][F] per sequence
    y : per step [T][B] class ids or [T][B][K] float rows; per sequence [B]
        ids or [B][K] rows.  Ids equal to ignore_index count nothing, nor do
        steps t >= lengths[n].
    lengths : [B] ints in 1..T, or None; must be None per sequence
    reduction : "sum" or "mean" (divided by the number of counted targets; 0
        when none counts)
    ignore_index : int

    Returns
    -------
    loss : float
    d_features : like features, Vᵀ dz (zero where nothing counts)
    dV : [K][F], Σ dz ⊗ f;  dc : [K] (Σ dz) or None without c
        with dz = ŷ Σ_k y_k - y, as in :func:`loss_and_grad`
    """
    V, c, features, lengths, per_step = _prepare_head(V, c, features, lengths)
    T, B, K = len(features), len(features[0]), len(V)
    if not per_step:
        if len(y) != B:
            raise ValueError(f"y must have shape [{B}] (ids) or [{B}][{K}] (rows), got {len(y)} rows")
        y = [y]
    y, soft = _prepare_targets(y, T, B, K, ignore_index)
    z = _output_layer(V, c, features)  # eq. (2)
    total, dz = _cross_entropy(z, y, soft, lengths, reduction, ignore_index)  # eq. (3)
    dV, dc, d_features = _output_layer_backward(V, features, dz, lengths)  # eq. (4)
    return total, d_features if per_step else d_features[0], dV, dc if c is not None else None


def linear_head_forward(V, c, features):
    """predictions = V f + c for each feature row (shapes as :func:`softmax_head_forward`)."""
    V, c, features, _, per_step = _prepare_head(V, c, features, None)
    predictions = _output_layer(V, c, features)
    return predictions if per_step else predictions[0]


def _squared_error(predictions, y, lengths, reduction):
    """torch.nn.MSELoss and its gradient: return (loss, d_predictions [T][B][K]).

    L = Σ (ŷ - y)² over steps t < lengths[n] and every output; "mean" divides
    by the number of those terms."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    T, B, K = len(predictions), len(predictions[0]), len(predictions[0][0])
    terms = []
    d_predictions = _zeros(T, B, K)
    for t in range(T):
        for n in range(B):
            if t >= lengths[n]:
                continue
            residual = [pk - yk for pk, yk in zip(predictions[t][n], y[t][n])]
            terms.extend(rk * rk for rk in residual)
            # forward: (ŷ - y)²  ->  dŷ = 2 (ŷ - y)
            d_predictions[t][n] = [2.0 * rk for rk in residual]
    total = math.fsum(terms)
    if reduction == "mean":
        scale = 1.0 / len(terms)  # lengths >= 1: at least one step counts
        total *= scale
        d_predictions = [[[scale * g for g in row] for row in step] for step in d_predictions]
    return total, d_predictions


def linear_head(V, c, features, y, *, lengths=None, reduction="sum"):
    """A linear output with the mean squared error (torch.nn.MSELoss) on any features.

    Parameters
    ----------
    V : [K][F];  c : [K] or None
    features : [T][B][F] per step, or [B][F] per sequence
    y : targets shaped like the predictions, [T][B][K] or [B][K]
    lengths : [B] ints in 1..T, or None; steps t >= lengths[n] count nothing;
        must be None per sequence
    reduction : "sum" (Σ over counted steps and outputs of (ŷ - y)²) or
        "mean" (divided by counted steps × K)

    Returns
    -------
    loss : float
    d_features : like features, Vᵀ dŷ (zero at uncounted steps)
    dV : [K][F], Σ dŷ ⊗ f;  dc : [K] (Σ dŷ) or None without c
        with dŷ = 2 (ŷ - y) (× 1/count for "mean")
    """
    V, c, features, lengths, per_step = _prepare_head(V, c, features, lengths)
    T, B, K = len(features), len(features[0]), len(V)
    if per_step:
        if len(y) != T:
            raise ValueError(f"y must have shape [{T}][{B}][{K}], like the predictions")
        y = [_matrix(f"y[{t}]", y_t, B, K) for t, y_t in enumerate(y)]
    else:
        y = [_matrix("y", y, B, K)]
    predictions = _output_layer(V, c, features)
    total, d_predictions = _squared_error(predictions, y, lengths, reduction)
    dV, dc, d_features = _output_layer_backward(V, features, d_predictions, lengths)
    return total, d_features if per_step else d_features[0], dV, dc if c is not None else None
