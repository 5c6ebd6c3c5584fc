"""The report's text layout: how many characters fit a width (:func:`chars`), wrapping
(:func:`wrap`), and :class:`Flow`, which lays text and tables out one after the other on
landscape pages, a new page when one is full; :func:`save` adds a finished page."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from .style import A4L, SMALL, TEXT, TITLE


def save(pdf, fig):
    """Add the figure to the PDF as a page and free it."""
    pdf.savefig(fig)
    plt.close(fig)


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters (long words broken, never at hyphens)."""
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def chars(width_in: float, size: float) -> int:
    """How many characters of the report's font at ``size`` pt fit ``width_in`` inches
    (DejaVu Sans averages about half an em per character; a little margin)."""
    return max(4, int(width_in * 72 / (size * 0.55)))


class Flow:
    """Text and tables laid out one after the other on landscape pages, each line wrapped to
    the page and each table cell to its column; a new page (with the title, continued, and
    the table's header again) when the page is full."""
    LEFT, WIDTH, TOP, BOTTOM = 0.04, 0.92, 0.9, 0.05

    def __init__(self, pdf, title: str, max_pages: int | None = None):
        self.pdf, self.title, self.max_pages = pdf, title, max_pages
        self.fig, self.pages, self.y, self.full = None, 0, 0.0, False

    def _new(self):
        if self.fig is not None:
            save(self.pdf, self.fig)
        self.pages += 1
        self.fig = plt.figure(figsize=A4L)
        self.fig.text(self.LEFT, 0.955, self.title + (" (continued)" if self.pages > 1 else ""), fontsize=TITLE,
                      va="top")
        self.y = self.TOP

    def _room(self, h: float) -> bool:
        """Make room for ``h`` (figure fraction); False once max_pages are full."""
        if self.fig is None:
            self._new()
        elif self.y - h < self.BOTTOM:
            if self.max_pages and self.pages >= self.max_pages:
                self.full = True
                return False
            self._new()
        return True

    @staticmethod
    def line_h(size: float) -> float:
        return size * 1.35 / 72 / A4L[1]

    def text(self, s: str, size=TEXT, color="black", weight="normal", indent: int = 0, space_before=0.0):
        width = chars(A4L[0] * self.WIDTH, size) - indent
        self.y -= space_before
        for j, w in enumerate(wrap(s.strip(), width - (4 if indent == 0 else 0))):
            if not self._room(self.line_h(size)):
                return
            x = self.LEFT + (indent + (4 if j else 0)) * size * 0.55 / 72 / A4L[0]
            self.fig.text(x, self.y, w, fontsize=size, color=color, weight=weight, va="top")
            self.y -= self.line_h(size)

    def table(self, header, body, widths, colors=None, text_colors=None, size=SMALL) -> int:
        """Draw a table; returns how many rows were drawn (fewer once max_pages are full)."""
        total = sum(widths)
        ws = [w * self.WIDTH / total for w in widths]
        xs = [self.LEFT + sum(ws[:j]) for j in range(len(ws))]
        cols = [chars(w * A4L[0] - 0.1, size) for w in ws]
        lh = size * 1.22 / 72 / A4L[1]

        def cells(row):
            return [wrap(str(c), n) for c, n in zip(row, cols)]
        head = cells(header)
        head_h = max(len(c) for c in head) * lh + 0.012

        def draw_header():
            self.fig.add_artist(Rectangle((self.LEFT, self.y - head_h), self.WIDTH, head_h,
                                          transform=self.fig.transFigure, facecolor="#dddddd", edgecolor="none"))
            for x, c in zip(xs, head):
                self.fig.text(x + 0.004, self.y - 0.005, "\n".join(c), va="top", fontsize=size, weight="bold",
                              linespacing=1.1)
            self.y -= head_h
        if not self._room(head_h + lh * 2):
            return 0
        draw_header()
        if not body:
            self.fig.text(self.LEFT + 0.004, self.y - 0.005, "(no rows)", va="top", fontsize=size)
            self.y -= lh + 0.01
        for i, row in enumerate(body):
            wr = cells(row)
            h = max(len(c) for c in wr) * lh + 0.008
            if self.y - h < self.BOTTOM:
                if not self._room(h + head_h):
                    return i
                draw_header()
            rc = colors[i] if colors else None
            tc = text_colors[i] if text_colors else None
            for j, (x, c) in enumerate(zip(xs, wr)):
                cc = rc[j] if isinstance(rc, (list, tuple)) else rc
                if cc:
                    self.fig.add_artist(Rectangle((x, self.y - h), ws[j], h, transform=self.fig.transFigure,
                                                  facecolor=cc, edgecolor="none"))
                t = tc[j] if isinstance(tc, (list, tuple)) else tc
                self.fig.text(x + 0.004, self.y - 0.004, "\n".join(c), va="top", fontsize=size,
                              color=t or "black", linespacing=1.1)
            self.fig.add_artist(plt.Line2D([self.LEFT, self.LEFT + self.WIDTH], [self.y - h] * 2,
                                           transform=self.fig.transFigure, color="#cccccc", lw=0.5))
            self.y -= h
        self.y -= 0.01
        return len(body)

    def area(self, h: float):
        """Reserve ``h`` (figure fraction) for a drawing: below what is there when it fits,
        else on a new page; returns (figure, the top of the area)."""
        if self.fig is None or self.y - h < self.BOTTOM:
            self._new()
        top, self.y = self.y, self.BOTTOM
        return self.fig, top

    def close(self):
        if self.fig is not None:
            save(self.pdf, self.fig)
            self.fig = None
