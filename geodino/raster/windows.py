"""Integer pixel windows (pure, numpy-free arithmetic).

A :class:`Window` is a half-open box of pixels ``[row, row + height) x [col, col + width)``. It may extend outside a
raster (negative offsets, or past the last row/column); readers fill such pixels themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    """Integer pixel window ``[row, row + height) x [col, col + width)``.

    Attributes:
        row: First row (may be negative).
        col: First column (may be negative).
        height: Number of rows (>= 0).
        width: Number of columns (>= 0).
    """

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("row", "col", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                # Accept numpy integers, but store plain ints so windows hash and compare predictably.
                try:
                    as_int = int(value)
                except (TypeError, ValueError):
                    raise TypeError(f"Window.{name} must be an integer, got {value!r}") from None
                if as_int != value:
                    raise TypeError(f"Window.{name} must be an integer, got {value!r}")
                object.__setattr__(self, name, as_int)
        if self.height < 0 or self.width < 0:
            raise ValueError(f"Window size must be >= 0, got {self.height}x{self.width}")

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.row + self.height

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.col + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def is_empty(self) -> bool:
        """True when the window holds no pixel."""
        return self.height == 0 or self.width == 0

    @classmethod
    def full(cls, height: int, width: int) -> Window:
        """The window of a whole ``height x width`` raster."""
        return cls(0, 0, height, width)

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they share no pixel."""
        row, col = max(self.row, other.row), max(self.col, other.col)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if bottom <= row or right <= col:
            return None
        return Window(row, col, bottom - row, right - col)

    def union(self, other: Window) -> Window:
        """The smallest window holding both windows."""
        row, col = min(self.row, other.row), min(self.col, other.col)
        return Window(row, col, max(self.bottom, other.bottom) - row, max(self.right, other.right) - col)

    def contains(self, other: Window) -> bool:
        """True when ``other`` lies entirely inside this window."""
        return (
            other.row >= self.row
            and other.col >= self.col
            and other.bottom <= self.bottom
            and other.right <= self.right
        )

    def clip(self, height: int, width: int) -> Window | None:
        """The part of this window inside a ``height x width`` raster, or None if it lies outside."""
        return self.intersection(Window(0, 0, height, width))

    def shift(self, drow: int, dcol: int) -> Window:
        """The window moved by ``(drow, dcol)`` pixels."""
        return Window(self.row + drow, self.col + dcol, self.height, self.width)

    def pad(self, margin: int | tuple[int, int]) -> Window:
        """The window grown by ``margin`` pixels on every side (``(rows, cols)`` for different margins)."""
        mr, mc = (margin, margin) if isinstance(margin, int) else margin
        return Window(self.row - mr, self.col - mc, self.height + 2 * mr, self.width + 2 * mc)

    def slices_in(self, outer: Window) -> tuple[slice, slice]:
        """This window's position inside ``outer``, as slices into an array covering ``outer``.

        Raises:
            ValueError: If this window does not lie inside ``outer``.
        """
        if not outer.contains(self):
            raise ValueError(f"{self} does not lie inside {outer}")
        r0, c0 = self.row - outer.row, self.col - outer.col
        return slice(r0, r0 + self.height), slice(c0, c0 + self.width)

    def slices(self) -> tuple[slice, slice]:
        """Slices of this window into an array that starts at pixel (0, 0) (offsets must be >= 0)."""
        if self.row < 0 or self.col < 0:
            raise ValueError(f"{self} has negative offsets; use slices_in(outer)")
        return slice(self.row, self.bottom), slice(self.col, self.right)

    def to_rasterio(self) -> Any:
        """The equivalent ``rasterio.windows.Window`` (col_off, row_off, width, height)."""
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col, self.row, self.width, self.height)
