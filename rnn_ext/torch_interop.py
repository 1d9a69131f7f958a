"""Moving weights between rnn_ext.RNN and PyTorch's nn.RNN + nn.Linear.

The mapping (DESIGN.md §2)::

    U = rnn.weight_ih_l0                  (H, D)
    W = rnn.weight_hh_l0                  (H, H)
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0   (H,)   PyTorch keeps two hidden biases
    V = linear.weight                     (K, H)
    c = linear.bias                       (K,)

so ``linear(rnn(x)[0])`` are the logits z_t of eq. (2).  PyTorch is imported
only inside these functions: rnn_ext itself does not need it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["from_torch", "to_torch"]


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


def from_torch(rnn: Any, linear: Any, *, dtype: Any = None):
    """An :class:`rnn_ext.RNN` holding the weights of ``rnn`` and ``linear``.

    Parameters
    ----------
    rnn : torch.nn.RNN
        One layer, unidirectional, ``nonlinearity`` "tanh" or "relu".
    linear : torch.nn.Linear
        ``in_features == rnn.hidden_size``; it has a bias exactly when ``rnn`` has.
    dtype : float32 or float64, optional
        The model's dtype; by default that of the torch weights (which must
        then be float32 or float64, the same in both modules).

    Returns
    -------
    RNN
        With U, W, b, V, c as in the module docstring and ``batch_first``
        carried over.  b = bias_ih_l0 + bias_hh_l0 is summed in float64.
    """
    torch = _import_torch("RNN.from_torch")
    if not isinstance(rnn, torch.nn.RNN):
        raise TypeError(f"rnn must be a torch.nn.RNN, got {type(rnn).__name__}")
    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
    if rnn.num_layers != 1:
        raise ValueError(f"rnn must have num_layers=1, got num_layers={rnn.num_layers}")
    if rnn.bidirectional:
        raise ValueError("rnn must be unidirectional, got bidirectional=True")
    if rnn.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn.nonlinearity must be 'tanh' or 'relu', got {rnn.nonlinearity!r}")
    if linear.in_features != rnn.hidden_size:
        raise ValueError(
            f"linear.in_features must equal rnn.hidden_size={rnn.hidden_size}, "
            f"got {linear.in_features}"
        )
    if rnn.bias != (linear.bias is not None):
        raise ValueError(
            f"rnn and linear must both have biases or both have none, got rnn.bias={rnn.bias} "
            f"and linear.bias {'present' if linear.bias is not None else 'None'}"
        )
    if dtype is None:
        dtypes = {rnn.weight_ih_l0.dtype, linear.weight.dtype}
        if len(dtypes) != 1:
            raise ValueError(
                f"rnn and linear have different dtypes ({rnn.weight_ih_l0.dtype} and "
                f"{linear.weight.dtype}); pass dtype= to choose the model's"
            )
        torch_dtype = dtypes.pop()
        if torch_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"torch weights must be float32 or float64 to infer the dtype, got {torch_dtype}; "
                "pass dtype=np.float32 or np.float64"
            )
        dtype = np.float64 if torch_dtype == torch.float64 else np.float32

    from .model import RNN  # here, not at the top: model.py imports this module lazily too

    model = RNN(
        rnn.input_size, rnn.hidden_size, linear.out_features,
        bias=rnn.bias, nonlinearity=rnn.nonlinearity, dtype=dtype,
        batch_first=rnn.batch_first,
    )
    model.U = _numpy(rnn.weight_ih_l0)
    model.W = _numpy(rnn.weight_hh_l0)
    model.V = _numpy(linear.weight)
    if rnn.bias:
        model.b = _numpy(rnn.bias_ih_l0) + _numpy(rnn.bias_hh_l0)
        model.c = _numpy(linear.bias)
    return model


def to_torch(model: Any):
    """``(torch.nn.RNN, torch.nn.Linear)`` computing what ``model`` computes.

    b goes to ``bias_ih_l0`` and ``bias_hh_l0`` is zero; the modules have the
    model's dtype (float32 or float64) and ``batch_first``, and live on the CPU.
    """
    torch = _import_torch("RNN.to_torch")
    torch_dtype = torch.float64 if np.dtype(model.dtype) == np.float64 else torch.float32
    rnn = torch.nn.RNN(
        model.input_size, model.hidden_size, num_layers=1, nonlinearity=model.nonlinearity,
        bias=model.bias, batch_first=model.batch_first, dtype=torch_dtype,
    )
    linear = torch.nn.Linear(model.hidden_size, model.output_size, bias=model.bias,
                             dtype=torch_dtype)

    def tensor(a: np.ndarray):
        return torch.from_numpy(np.array(a, dtype=model.dtype, copy=True))

    with torch.no_grad():
        rnn.weight_ih_l0.copy_(tensor(model.U))
        rnn.weight_hh_l0.copy_(tensor(model.W))
        linear.weight.copy_(tensor(model.V))
        if model.bias:
            rnn.bias_ih_l0.copy_(tensor(model.b))
            rnn.bias_hh_l0.zero_()
            linear.bias.copy_(tensor(model.c))
    return rnn, linear
