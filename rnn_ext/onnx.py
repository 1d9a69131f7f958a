"""Export to ONNX: a trained model runs wherever ONNX Runtime (or any ONNX runtime) does.

>>> rnn_ext.onnx.export(model, "model.onnx")          # an RNN, or a Recurrent (+ a head)
>>> import onnxruntime as ort
>>> sess = ort.InferenceSession("model.onnx")
>>> probs, h_n = sess.run(None, {"x": x, "h0": h0, "lengths": lengths})

The graph, per layer k and direction (DESIGN.md §6), is ONNX's own ``RNN``
operator, whose equation is eq. (1)::

    H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)     ONNX RNN
    h_t = f(U x_t   + W h_{t-1}   + b)           rnn_ext,  so  W := U, R := W, [Wb, Rb] := [b, 0]

Stacked layers are chained: a layer's ``Y`` of shape (T, dirs, B, H) becomes
the next layer's input (T, B, dirs*H) by Transpose + Reshape (Squeeze for one
direction), the directions in rnn_ext's order [forward, reverse].  The head is
``MatMul`` + ``Add`` (+ ``Softmax`` over the last axis).

Integer ids (id i stands for the one-hot e_i, so ``U x_t`` is column i of U)
are a ``Gather`` of the rows of Uᵀ, giving the projected input (T, B, dirs*H);
the first RNN then multiplies it by an identity (its ``W`` input, built in the
graph by ``EyeLike``, so it takes no room in the file).  A product with an
identity adds only exact zeros, so the result is exactly column i of U; the
extra cost is one (T*B, dirs*H) x (dirs*H, H) GEMM per direction, done once
for all steps, whatever the vocabulary's size (a ``OneHot`` input with W = U
would cost T*B*D*H and T*B*D floats, and silently map out-of-range ids to
zero vectors, where ``Gather`` fails).

See docs/onnx.md for the inputs and outputs a caller passes and gets.
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import heads
from ._version import __version__
from .model import RNN
from .recurrent import Recurrent

__all__ = ["export", "DEFAULT_OPSET", "MIN_OPSET"]

#: The opset written unless ``opset=`` says otherwise (ONNX 1.12 / ONNX Runtime 1.13 and newer).
DEFAULT_OPSET = 17
#: The oldest opset the graph can be written in (Squeeze/Unsqueeze take their axes as inputs
#: and Softmax normalizes one axis from opset 13 on).
MIN_OPSET = 13
# protobuf cannot serialize a message of 2 GiB or more
_PROTOBUF_LIMIT = 2**31 - 1
_INPUTS = ("ids", "floats")
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}


# --- the generic description the graph is built from ---------------------------------------


@dataclass(frozen=True)
class _Layer:
    """A stack of Elman layers: what the exporter needs from a Recurrent (or an RNN's).

    ``params`` maps ``U_l{k}{suffix}`` (H, D_k), ``W_l{k}{suffix}`` (H, H) and, with
    bias, ``b_l{k}{suffix}`` (H,) to arrays, ``suffix`` in ("", "_reverse")[:dirs].
    """

    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    nonlinearity: str
    bias: bool
    batch_first: bool
    params: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Head:
    """A per-step output layer on features F = dirs*H: z = V f + c, then softmax or not."""

    softmax: bool
    V: np.ndarray  # (K, F)
    c: np.ndarray | None  # (K,)


def _suffixes(dirs: int) -> tuple[str, ...]:
    return ("", "_reverse")[:dirs]


def _layer_of(layer: Recurrent, batch_first: bool) -> _Layer:
    return _Layer(input_size=layer.input_size, hidden_size=layer.hidden_size,
                  num_layers=layer.num_layers, num_directions=layer.num_directions,
                  nonlinearity=layer.nonlinearity, bias=layer.bias, batch_first=batch_first,
                  params=dict(layer.params))


def _head_of(head: Any, dtype: np.dtype) -> _Head:
    """A head object (rnn_ext.heads.Softmax / Linear) as a _Head."""
    if not isinstance(head, (heads.Softmax, heads.Linear)):
        raise TypeError(f"head must be None, True, False or an rnn_ext.heads.Softmax / "
                        f"heads.Linear, got {type(head).__module__}.{type(head).__name__}")
    if head.dtype != dtype:
        raise ValueError(f"the head is {head.dtype.name} but the layer is {dtype.name}; "
                         f"give them one dtype")
    params = head.params
    return _Head(softmax=isinstance(head, heads.Softmax), V=params["V"], c=params.get("c"))


def _describe(model: Any, head: Any) -> tuple[_Layer, _Head | None, str]:
    """(layer, head, default input kind) for an RNN or a Recurrent and the ``head=`` choice."""
    own: _Head | None
    if isinstance(model, RNN):
        # the model's batch_first is the one its forward follows
        layer, own = _layer_of(model.layer, model.batch_first), _head_of(model.head, model.dtype)
        kind = "ids" if model.vocab is not None else "floats"
    elif isinstance(model, Recurrent):
        layer, own, kind = _layer_of(model, model.batch_first), None, "floats"
    else:
        raise TypeError(f"model must be an rnn_ext.RNN or an rnn_ext.Recurrent, "
                        f"got {type(model).__module__}.{type(model).__name__}")
    chosen: _Head | None
    if head is None:
        chosen = own
    elif isinstance(head, (bool, np.bool_)):
        if head and own is None:
            raise ValueError(f"head=True asks for the model's head, but a {type(model).__name__} "
                             f"has none; pass a head object (rnn_ext.heads.Softmax / Linear) or "
                             f"head=None")
        chosen = own if head else None
    elif own is not None:
        raise TypeError(f"an RNN exports with its own head; head must be None, True or False, "
                        f"got {type(head).__name__}")
    else:
        chosen = _head_of(head, model.dtype)
        F = layer.num_directions * layer.hidden_size
        if chosen.V.shape[1] != F:
            raise ValueError(f"the head takes {chosen.V.shape[1]} features, but the layer gives "
                             f"num_directions * hidden_size = {F}")
    return layer, chosen, kind


# --- the graph ---------------------------------------------------------------------------------


class _Graph:
    """Nodes and initializers, added in order, with short unique names."""

    def __init__(self, onnx: Any, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _stack(params: dict[str, np.ndarray], name: str, k: int, dirs: int, dtype: np.dtype,
           transform: Any = None) -> np.ndarray:
    """[params[f"{name}_l{k}{suffix}"] for each direction], stacked on a new axis 0."""
    arrays = [params[f"{name}_l{k}{s}"] for s in _suffixes(dirs)]
    if transform is not None:
        arrays = [transform(a) for a in arrays]
    return np.stack(arrays).astype(dtype)


def _build(onnx: Any, layer: _Layer, head: _Head | None, ids: bool, dtype: np.dtype,
           with_h0: bool, with_lengths: bool) -> tuple[Any, list[Any], list[Any]]:
    """The graph (nodes and initializers), its inputs and its outputs."""
    helper = onnx.helper
    TP = onnx.TensorProto
    g = _Graph(onnx, dtype)
    L, dirs, H, D = layer.num_layers, layer.num_directions, layer.hidden_size, layer.input_size
    p = layer.params
    act = [_ACTIVATIONS[layer.nonlinearity]] * dirs
    direction = "bidirectional" if dirs == 2 else "forward"

    x_dims: list[Any] = ["T", "B"] if not layer.batch_first else ["B", "T"]
    if ids:
        inputs = [helper.make_tensor_value_info("x", TP.INT64, x_dims)]
    else:
        inputs = [helper.make_tensor_value_info("x", g.elem, [*x_dims, D])]
    x = g.node("Transpose", ["x"], "x_time_major", perm=[1, 0] if ids else [1, 0, 2]) \
        if layer.batch_first else "x"
    if with_h0:
        inputs.append(helper.make_tensor_value_info("h0", g.elem, [L * dirs, "B", H]))
    seq_lens = ""
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TP.INT64, ["B"]))
        seq_lens = g.node("Cast", ["lengths"], "lengths_int32", to=TP.INT32)

    h_n_parts = []
    for k in range(L):
        tag = f"l{k}"
        if k == 0 and ids:
            # X_t = rows ids of [U_l0.T, U_l0_reverse.T], (T, B, dirs*H); W = identity blocks
            UT = np.concatenate([p[f"U_l0{s}"].T for s in _suffixes(dirs)], axis=1).astype(dtype)
            X = g.node("Gather", [g.const("U_l0_T", UT), x], "l0_projected_input", axis=0)
            zeros = g.node("ConstantOfShape", [g.ints("identity_shape", [H, dirs * H])],
                           "identity_zeros", value=onnx.numpy_helper.from_array(np.zeros(1, dtype)))
            eyes = [g.node("Unsqueeze", [g.node("EyeLike", [zeros], f"identity_{d}", k=d * H),
                                         g.ints(f"identity_{d}_axes", [0])], f"identity_{d}_3d")
                    for d in range(dirs)]
            Wk = eyes[0] if dirs == 1 else g.node("Concat", eyes, "l0_W_identity", axis=0)
        else:
            X = x
            Wk = g.const(f"{tag}_W", _stack(p, "U", k, dirs, dtype))        # (dirs, H, D_k)
        Rk = g.const(f"{tag}_R", _stack(p, "W", k, dirs, dtype))            # (dirs, H, H)
        Bk = ""
        if layer.bias:
            # [Wb, Rb] = [b, 0]: rnn_ext keeps one hidden bias
            Bk = g.const(f"{tag}_B", _stack(p, "b", k, dirs, dtype,
                                            lambda b: np.concatenate([b, np.zeros_like(b)])))
        h0k = ""
        if with_h0:
            h0k = g.node("Slice", ["h0", g.ints(f"{tag}_h0_start", [k * dirs]),
                                   g.ints(f"{tag}_h0_end", [(k + 1) * dirs]),
                                   g.ints(f"{tag}_h0_axes", [0])], f"{tag}_h0")
        Y, Yh = f"{tag}_Y", (f"{tag}_h_n" if L > 1 else "h_n")
        g.nodes.append(helper.make_node(
            "RNN", [X, Wk, Rk, Bk, seq_lens, h0k], [Y, Yh], name=f"{tag}_RNN", hidden_size=H,
            activations=act, direction=direction))
        h_n_parts.append(Yh)
        # Y (T, dirs, B, H) -> (T, B, dirs*H), directions [forward, reverse]
        if dirs == 1:
            x = g.node("Squeeze", [Y, g.ints(f"{tag}_squeeze_axes", [1])], f"{tag}_output")
        else:
            t = g.node("Transpose", [Y], f"{tag}_Y_TBdH", perm=[0, 2, 1, 3])
            x = g.node("Reshape", [t, g.ints(f"{tag}_output_shape", [0, 0, dirs * H])],
                       f"{tag}_output")
    if L > 1:
        g.node("Concat", h_n_parts, "h_n", axis=0)

    F = dirs * H
    if head is None:
        name, out, last = "output", x, F
    else:
        K = head.V.shape[0]
        z = g.node("MatMul", [x, g.const("V_T", head.V.T.astype(dtype))], "logits_no_bias")
        if head.c is not None:
            z = g.node("Add", [z, g.const("c", head.c.astype(dtype))], "logits")
        if head.softmax:
            name, out = "probs", g.node("Softmax", [z], "probs_time_major", axis=-1)
        else:
            name, out = "predictions", z
        last = K
    if layer.batch_first:
        g.node("Transpose", [out], name, perm=[1, 0, 2])
    else:
        g.node("Identity", [out], name)
    outputs = [helper.make_tensor_value_info(name, g.elem, [*x_dims, last]),
               helper.make_tensor_value_info("h_n", g.elem, [L * dirs, "B", H])]
    return g, inputs, outputs


# --- export ---------------------------------------------------------------------------------------


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("rnn_ext.onnx.export needs the onnx package: "
                          "pip install 'rnn-ext[onnx]'") from exc
    return onnx


def _check_opset(onnx: Any, opset: Any) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset must be an int, got {type(opset).__name__} {opset!r}")
    opset = int(opset)
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {newest}] (the installed onnx "
                         f"{onnx.__version__} knows up to {newest}), got {opset}")
    return opset


def _check_dtype(model_dtype: np.dtype, dtype: Any) -> np.dtype:
    if dtype is None:
        if model_dtype == np.float64:
            raise ValueError(
                "the model is float64, and ONNX Runtime has no float64 RNN kernel (its CPU RNN "
                "is float32 only); pass dtype=np.float32 to export a float32 copy (results then "
                "differ from the float64 model by float32 rounding), or dtype=np.float64 to "
                "write the exact float64 graph for a runtime that implements it")
        return np.dtype(model_dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be None, float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be None, float32 or float64, got {dt}")
    return dt


def _write(data: bytes, path: str | os.PathLike) -> None:
    """data to path atomically: a temporary file in the same directory, then os.replace."""
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(21, "is a directory, not a file name", target)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write there ({exc.strerror})", target) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def export(model: Any, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
           input: str | None = None, head: Any = None, h0: bool = True, lengths: bool = True,
           dtype: Any = None) -> None:
    r"""Write ``model`` as an ONNX graph to ``path``.

    Per layer k and direction (ONNX ``RNN`` operator, one per layer)::

        h_t = f(U_lk x_t + W_lk h_{t-1} + b_lk)            eq. (1), f = tanh or relu
        probs_t = softmax(V output_t + c)                  eq. (2), with a softmax head

    Equivalent to ``model.forward(x, h0, lengths)``: the graph's ``probs`` (or
    ``output``) and ``h_n`` are rnn_ext's to float32 rounding.

    Parameters
    ----------
    model : rnn_ext.RNN or rnn_ext.Recurrent
    path : str or os.PathLike
        Written atomically (a temporary file in the same directory, then renamed);
        on any failure nothing is left behind and an existing file is untouched.
    opset : int, default 17
        The ONNX opset, in [13, the installed onnx's newest].
    input : {"ids", "floats"}, optional
        What ``x`` holds: int64 ids (T, B), id i standing for the one-hot e_i, or
        floats (T, B, D).  Default: "ids" for a model trained on text (with a
        ``vocab``), else "floats".
    head : None, bool, or an rnn_ext.heads.Softmax / heads.Linear
        None: the model's own head if it has one (an RNN's softmax; a Recurrent
        has none).  True: the model's head, and an error if it has none.  False:
        no head; the graph outputs the last layer's ``output``.  A head object:
        that head on top of a Recurrent.
    h0, lengths : bool, default True
        Whether the graph takes the inputs ``h0`` and ``lengths``.  A graph
        without them runs as if given zeros and T for every sequence.
    dtype : None, float32 or float64
        The graph's float type.  None: the model's dtype; a float64 model then
        raises (ONNX Runtime's CPU RNN kernel is float32 only) until float32
        (a documented cast) or float64 (exact) is chosen.

    The graph's inputs (B and T are dynamic; ``T, B`` read ``B, T`` for a
    batch_first model):

    ``x``        int64 (T, B) ids, or (T, B, D) floats of the graph's dtype
    ``h0``       (L*dirs, B, H), PyTorch's order (layer-major, then direction)
    ``lengths``  int64 (B,), each in [1, T]

    and outputs: ``probs`` (T, B, K) with a softmax head, ``predictions``
    (T, B, K) with a linear head, or ``output`` (T, B, dirs*H) without one;
    then ``h_n`` (L*dirs, B, H).

    Raises
    ------
    TypeError
        For an object that is not an RNN or a Recurrent, or a bad ``head``.
    ValueError
        For head=True on a model without one, an unsupported opset, dtype or
        input kind, or a model too large for one ONNX file (2 GiB).
    OSError
        When ``path`` cannot be written.
    ImportError
        When the onnx package is missing (``pip install 'rnn-ext[onnx]'``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    layer, chosen, default_kind = _describe(model, head)
    kind = default_kind if input is None else input
    if kind not in _INPUTS:
        raise ValueError(f"input must be one of {_INPUTS} or None, got {input!r}")
    for flag, value in (("h0", h0), ("lengths", lengths)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__} {value!r}")
    onnx = _import_onnx()
    opset = _check_opset(onnx, opset)
    dt = _check_dtype(np.dtype(model.dtype), dtype)
    nbytes = sum(a.size for a in layer.params.values()) * dt.itemsize
    if chosen is not None:
        nbytes += (chosen.V.size + (chosen.c.size if chosen.c is not None else 0)) * dt.itemsize
    if nbytes >= _PROTOBUF_LIMIT:
        raise ValueError(f"the parameters take {nbytes:,} bytes; one ONNX file holds less than "
                         f"2 GiB (protobuf's limit)")

    g, inputs, outputs = _build(onnx, layer, chosen, kind == "ids", dt, bool(h0), bool(lengths))
    graph = onnx.helper.make_graph(g.nodes, "rnn_ext", inputs, outputs, g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnn_ext",
                                   producer_version=__version__,
                                   doc_string="An Elman RNN exported by rnn_ext (docs/onnx.md).")
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    config = {"input_size": layer.input_size, "hidden_size": layer.hidden_size,
              "num_layers": layer.num_layers, "num_directions": layer.num_directions,
              "nonlinearity": layer.nonlinearity, "bias": layer.bias,
              "batch_first": layer.batch_first, "input": kind, "dtype": dt.name,
              "head": None if chosen is None else ("softmax" if chosen.softmax else "linear")}
    meta = {"rnn_ext.version": __version__, "rnn_ext.config": json.dumps(config)}
    vocab = getattr(model, "vocab", None)
    if vocab is not None:
        meta["rnn_ext.vocab"] = json.dumps(vocab.chars)
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    _write(proto.SerializeToString(), path)
