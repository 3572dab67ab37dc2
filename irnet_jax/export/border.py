"""Zero padding of a binary conv, exactly, on an XNOR-popcount datapath.

A zero-padded binary conv sees 0 at its border taps: those taps add nothing to the sum. The datapath
pads with +1 bits instead (every tap a bit) and subtracts what the +1 border taps added:

    D_zero[r, c, o] = D_one[r, c, o] - C[row_class[r], col_class[c], o]
    C[., ., o]      = sum over the border taps (ch, kh, kw) of w_o(ch, kh, kw)        (w in {-1, +1})

A tap ``(kh, kw)`` of output position ``(r, c)`` is on the border when its input row
``r * stride + kh - pad`` is outside ``[0, H)`` or its column ``c * stride + kw - pad`` is outside
``[0, W)``. Which kernel rows fall outside depends on ``r`` only, so the output rows form a few
*row classes* (for a 3x3 conv with padding 1: top, interior, bottom), the columns likewise, and
``C`` is a table ``[row classes, column classes, C_out]`` of small integers.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def outside_taps(out_size: int, in_size: int, k: int, stride: int, pad: int) -> list[tuple[int, ...]]:
    """For every output index ``r``: the kernel offsets ``kh`` whose input index ``r*stride + kh - pad``
    falls outside ``[0, in_size)``."""
    return [tuple(kh for kh in range(k) if not 0 <= r * stride + kh - pad < in_size) for r in range(out_size)]


def classes(taps: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """``(distinct tap sets in order of first appearance, class index of every position)``."""
    distinct: list[tuple[int, ...]] = []
    for t in taps:
        if t not in distinct:
            distinct.append(t)
    return distinct, np.array([distinct.index(t) for t in taps], np.int32)


@dataclasses.dataclass
class BorderCorrection:
    """The correction table of one zero-padded binary conv (module docstring), or any other
    per-position quantity that depends only on the border class (``class_table``).

    ``table: [R, Q, C_out]`` integers (int32 for a binary conv's correction); ``row_class: [H']``,
    ``col_class: [W']`` int32; ``row_taps[i]`` (``col_taps[j]``): the kernel rows (columns) outside the
    image for row class ``i`` (column class ``j``).
    """

    table: np.ndarray
    row_class: np.ndarray
    col_class: np.ndarray
    row_taps: list[tuple[int, ...]]
    col_taps: list[tuple[int, ...]]

    def per_position(self) -> np.ndarray:
        """``C`` expanded to every output position: ``[H', W', C_out]`` int32."""
        return self.table[self.row_class[:, None], self.col_class[None, :]]

    def position_class(self) -> np.ndarray:
        """``[H' * W']`` flat class ``row_class * Q + col_class`` of every position in ``(h, w)`` order."""
        q = self.table.shape[1]
        return (self.row_class[:, None] * q + self.col_class[None, :]).reshape(-1)


def border_correction(
    weight_bits: np.ndarray, in_hw: tuple[int, int], kernel_size: int, stride: int, pad: int
) -> BorderCorrection:
    """The table for ``weight_bits: [C_out, C_in * k * k]`` in ``(c, kh, kw)`` order on an ``in_hw`` input."""
    k = kernel_size
    (h, w), c_out = in_hw, weight_bits.shape[0]
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    row_taps, row_class = classes(outside_taps(ho, h, k, stride, pad))
    col_taps, col_class = classes(outside_taps(wo, w, k, stride, pad))
    signs = (2 * weight_bits.astype(np.int32) - 1).reshape(c_out, -1, k, k).sum(axis=1)  # [C_out, kh, kw]
    table = np.zeros((len(row_taps), len(col_taps), c_out), np.int32)
    for i, rows in enumerate(row_taps):
        for j, cols in enumerate(col_taps):
            mask = np.zeros((k, k), bool)
            mask[list(rows), :] = True
            mask[:, list(cols)] = True
            table[i, j] = (signs * mask).sum(axis=(1, 2))
    return BorderCorrection(table, row_class, col_class, row_taps, col_taps)


def class_table(
    values: np.ndarray, in_hw: tuple[int, int], kernel_size: int, stride: int, pad: int
) -> BorderCorrection:
    """``values [H', W', C]``, one per output position of a ``kernel_size`` conv on ``in_hw``, as a
    table per border class; ``ValueError`` when two positions of one class hold different values."""
    k, (h, w) = kernel_size, in_hw
    ho, wo = values.shape[:2]
    row_taps, row_class = classes(outside_taps(ho, h, k, stride, pad))
    col_taps, col_class = classes(outside_taps(wo, w, k, stride, pad))
    first_row = [int(np.argmax(row_class == i)) for i in range(len(row_taps))]
    first_col = [int(np.argmax(col_class == j)) for j in range(len(col_taps))]
    table = BorderCorrection(values[first_row][:, first_col], row_class, col_class, row_taps, col_taps)
    if not np.array_equal(table.per_position(), values):
        raise ValueError("the values differ between positions of one border class")
    return table
