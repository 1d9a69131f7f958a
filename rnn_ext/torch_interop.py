"""Moving weights between rnn_ext's pieces and PyTorch's nn.RNN + nn.Linear.

The mapping (DESIGN.md §2), for each layer k and direction suffix s::

    U_l{k}{s} = rnn.weight_ih_l{k}{s}                        (H, In)
    W_l{k}{s} = rnn.weight_hh_l{k}{s}                        (H, H)
    b_l{k}{s} = rnn.bias_ih_l{k}{s} + rnn.bias_hh_l{k}{s}    (H,)  PyTorch keeps two
    V = linear.weight                                        (K, dirs*H)
    c = linear.bias                                          (K,)

so ``linear(rnn(x)[0])`` are the logits z_t of eq. (2).  PyTorch is imported
only inside these functions: rnn_ext itself does not need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layout import suffixes

__all__ = ["recurrent_state", "make_rnn", "linear_state", "make_linear"]


def _import_torch(what: str):
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"PyTorch is required for {what}: pip install rnn-ext[torch]"
        ) from exc
    return torch


def _numpy(tensor: Any) -> np.ndarray:
    """A float64 numpy copy of a (possibly CUDA, possibly grad-tracking) tensor."""
    return tensor.detach().cpu().double().numpy()


def _check_rnn(torch: Any, rnn: Any) -> None:
    if not isinstance(rnn, torch.nn.RNN):
        raise TypeError(f"rnn must be a torch.nn.RNN, got {type(rnn).__name__}")
    if rnn.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn.nonlinearity must be 'tanh' or 'relu', got {rnn.nonlinearity!r}")
    if getattr(rnn, "proj_size", 0):
        raise ValueError(f"rnn.proj_size must be 0, got {rnn.proj_size}")


def _dtype_of(torch: Any, tensors: list, dtype: Any, what: str):
    if dtype is not None:
        return dtype
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"{what} have different dtypes ({sorted(map(str, dtypes))}); "
                         "pass dtype= to choose the model's")
    torch_dtype = dtypes.pop()
    if torch_dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"torch weights must be float32 or float64 to infer the dtype, got {torch_dtype}; "
            "pass dtype=np.float32 or np.float64"
        )
    return np.float64 if torch_dtype == torch.float64 else np.float32


def _layer_values(rnn: Any) -> dict[str, np.ndarray]:
    """rnn_ext's names -> arrays: U = weight_ih, W = weight_hh, b = bias_ih + bias_hh
    (summed in float64)."""
    out = {}
    for k in range(rnn.num_layers):
        for s in suffixes(2 if rnn.bidirectional else 1):
            out[f"U_l{k}{s}"] = _numpy(getattr(rnn, f"weight_ih_l{k}{s}"))
            out[f"W_l{k}{s}"] = _numpy(getattr(rnn, f"weight_hh_l{k}{s}"))
            if rnn.bias:
                out[f"b_l{k}{s}"] = (_numpy(getattr(rnn, f"bias_ih_l{k}{s}"))
                                     + _numpy(getattr(rnn, f"bias_hh_l{k}{s}")))
    return out


def _fill_rnn(torch: Any, rnn: Any, values: dict[str, np.ndarray], dtype: Any) -> None:
    def tensor(a: np.ndarray):
        return torch.from_numpy(np.array(a, dtype=dtype, copy=True))

    with torch.no_grad():
        for name, a in values.items():
            p, rest = name.split("_", 1)
            theirs = {"U": "weight_ih_", "W": "weight_hh_", "b": "bias_ih_"}[p] + rest
            getattr(rnn, theirs).copy_(tensor(a))
            if p == "b":
                getattr(rnn, "bias_hh_" + rest).zero_()


def recurrent_state(rnn: Any, *, dtype: Any = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, values) of any ``torch.nn.RNN``: the keyword arguments of
    :class:`rnn_ext.Recurrent` and its parameters by rnn_ext's names."""
    torch = _import_torch("Recurrent.from_torch")
    _check_rnn(torch, rnn)
    config = dict(input_size=rnn.input_size, hidden_size=rnn.hidden_size,
                  num_layers=rnn.num_layers, nonlinearity=rnn.nonlinearity, bias=rnn.bias,
                  bidirectional=rnn.bidirectional, dropout=float(rnn.dropout),
                  batch_first=rnn.batch_first,
                  dtype=_dtype_of(torch, list(rnn.parameters()), dtype, "rnn's parameters"))
    return config, _layer_values(rnn)


def make_rnn(config: dict[str, Any], values: dict[str, np.ndarray]):
    """A ``torch.nn.RNN`` of ``config`` (Recurrent's keywords) holding ``values``
    (rnn_ext's names; each b goes to bias_ih and bias_hh is zero)."""
    torch = _import_torch("to_torch")
    dtype = np.dtype(config["dtype"])
    rnn = torch.nn.RNN(config["input_size"], config["hidden_size"],
                       num_layers=config["num_layers"], nonlinearity=config["nonlinearity"],
                       bias=config["bias"], batch_first=config["batch_first"],
                       dropout=config["dropout"], bidirectional=config["bidirectional"],
                       dtype=torch.float64 if dtype == np.float64 else torch.float32)
    _fill_rnn(torch, rnn, values, dtype)
    return rnn


def linear_state(rnn: Any, linear: Any, dtype: Any) -> dict[str, np.ndarray]:
    """{"V", "c"} of a ``torch.nn.Linear`` on top of ``rnn``, checked against it."""
    torch = _import_torch("RNN.from_torch")
    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
    features = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    if linear.in_features != features:
        raise ValueError(
            f"linear.in_features must equal rnn.hidden_size * num_directions = {features}, "
            f"got {linear.in_features}"
        )
    if rnn.bias != (linear.bias is not None):
        raise ValueError(
            f"rnn and linear must both have biases or both have none, got rnn.bias={rnn.bias} "
            f"and linear.bias {'present' if linear.bias is not None else 'None'}"
        )
    if dtype is None and rnn.weight_ih_l0.dtype != linear.weight.dtype:
        raise ValueError(
            f"rnn and linear have different dtypes ({rnn.weight_ih_l0.dtype} and "
            f"{linear.weight.dtype}); pass dtype= to choose the model's"
        )
    out = {"V": _numpy(linear.weight)}
    if linear.bias is not None:
        out["c"] = _numpy(linear.bias)
    return out


def make_linear(V: np.ndarray, c: np.ndarray | None, dtype: Any):
    """A ``torch.nn.Linear`` holding V (K, F) and c."""
    torch = _import_torch("RNN.to_torch")
    dtype = np.dtype(dtype)
    linear = torch.nn.Linear(V.shape[1], V.shape[0], bias=c is not None,
                             dtype=torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(V, dtype=dtype, copy=True)))
        if c is not None:
            linear.bias.copy_(torch.from_numpy(np.array(c, dtype=dtype, copy=True)))
    return linear
