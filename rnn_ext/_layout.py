"""Where each parameter lives in a piece's one flat buffer.

A layout is an ordered list of (name, shape); parameter k starts where
parameter k-1 ends.  Every piece (a recurrent layer, a head, a model made of
both) keeps its parameters in one contiguous 1-D array laid out by one of
these, with named views into it, so that an optimizer step, a clip or a
message to another process is one loop or one array.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from . import _flat

__all__ = ["Layout", "FlatParameters", "recurrent_layout", "head_layout", "suffixes",
           "init_uniform"]

#: The direction suffixes of PyTorch's ``nn.RNN``: forward, then reverse.
SUFFIXES = ("", "_reverse")


def suffixes(num_directions: int) -> tuple[str, ...]:
    return SUFFIXES[:num_directions]


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the parameters in one flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int
    sizes: tuple[int, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[tuple[str, tuple[int, ...]]]) -> Layout:
        names, shapes, offsets, sizes = [], [], [], []
        at = 0
        for name, shape in entries:
            names.append(name)
            shapes.append(tuple(int(n) for n in shape))
            offsets.append(at)
            sizes.append(int(np.prod(shape, dtype=np.int64)))
            at += sizes[-1]
        return cls(tuple(names), tuple(shapes), tuple(offsets), at, tuple(sizes))

    def __add__(self, other: Layout) -> Layout:
        return Layout.of(list(self.entries()) + list(other.entries()))

    def entries(self) -> Iterable[tuple[str, tuple[int, ...]]]:
        return zip(self.names, self.shapes)

    def offset(self, name: str) -> int:
        return self.offsets[self.names.index(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.names.index(name)]

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """{name: view of flat}, in layout order."""
        if not isinstance(flat, np.ndarray) or flat.shape != (self.size,):
            raise ValueError(f"flat buffer must have shape ({self.size},), got "
                             f"{getattr(flat, 'shape', type(flat).__name__)}")
        return _flat.views(flat, self._spans)

    @cached_property
    def _spans(self) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        """(name, offset in flat, shape) of each parameter, computed once:
        views() runs for every gradient."""
        return tuple((name, at, tuple(shape))
                     for name, shape, at in zip(self.names, self.shapes, self.offsets))


def recurrent_layout(input_size: int, hidden_size: int, num_layers: int,
                     num_directions: int, bias: bool) -> Layout:
    """U_l{k}{suffix} (H, In), W_l{k}{suffix} (H, H), b_l{k}{suffix} (H,), built in
    one loop as PyTorch's ``RNNBase`` builds ``weight_ih_l{k}{suffix}``; the input
    size of layer k is ``input_size if k == 0 else hidden_size * num_directions``."""
    H = hidden_size
    entries: list[tuple[str, tuple[int, ...]]] = []
    for k in range(num_layers):
        In = input_size if k == 0 else H * num_directions
        for s in suffixes(num_directions):
            entries.append((f"U_l{k}{s}", (H, In)))
            entries.append((f"W_l{k}{s}", (H, H)))
            if bias:
                entries.append((f"b_l{k}{s}", (H,)))
    return Layout.of(entries)


def layer_offsets(layout: Layout, num_layers: int, num_directions: int,
                  base: int = 0) -> np.ndarray:
    """(L*dirs, 3) intp offsets of each layer-direction's U, W, b (-1: no bias),
    relative to ``base``: the kernel's view of a recurrent layout."""
    offs = np.empty((num_layers * num_directions, 3), dtype=np.intp)
    for k in range(num_layers):
        for d, s in enumerate(suffixes(num_directions)):
            row = offs[k * num_directions + d]
            row[0] = layout.offset(f"U_l{k}{s}") - base
            row[1] = layout.offset(f"W_l{k}{s}") - base
            row[2] = layout.offset(f"b_l{k}{s}") - base if f"b_l{k}{s}" in layout.names else -1
    return offs


def head_layout(in_features: int, out_features: int, bias: bool) -> Layout:
    """V (out, in_features) and c (out,): the seed's output-layer letters."""
    entries: list[tuple[str, tuple[int, ...]]] = [("V", (out_features, in_features))]
    if bias:
        entries.append(("c", (out_features,)))
    return Layout.of(entries)


class FlatParameters:
    """A piece whose named parameters (``_params``) are views into its one flat
    buffer (``_flat``), laid out by ``_layout``.

    Pickling and copying keep that so: the buffer travels and the views are made
    again from it.  (Pickled views come back as arrays of their own: writing into
    one would no longer change the piece.)  ``copy.deepcopy`` and pickling give
    a piece with a buffer of its own; ``copy.copy`` one that shares the buffer,
    as a shallow copy shares its attributes.
    """

    _flat: np.ndarray
    _params: dict[str, np.ndarray]
    _layout: Layout
    #: attributes bound to the buffer (compiled short paths): None again
    #: whenever the buffer changes, and never pickled
    _BOUND: tuple[str, ...] = ()

    def _bind(self, flat: np.ndarray) -> None:
        """Hold ``flat`` (this layout's size and the piece's dtype) as the buffer."""
        self._flat = flat
        self._params = self._layout.views(flat)
        for name in self._BOUND:
            setattr(self, name, None)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_params"]
        for name in self._BOUND:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind(self._flat)


_CHUNK = 1 << 16


def init_uniform(flat: np.ndarray, bound: float, rng: np.random.Generator,
                 start: int = 0, stop: int | None = None) -> None:
    """flat[start:stop] := uniform(-bound, bound) draws, in order, in chunks.

    The draws are made in float64 (PyTorch's and NumPy's reference stream) and
    cast chunk by chunk, so the numbers equal one big ``rng.uniform`` call's
    while the extra memory stays one chunk, not a float64 copy of the buffer.
    """
    stop = flat.shape[0] if stop is None else stop
    for lo in range(start, stop, _CHUNK):
        hi = min(lo + _CHUNK, stop)
        flat[lo:hi] = rng.uniform(-bound, bound, size=hi - lo)
