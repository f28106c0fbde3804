"""A picture of the Grafana dashboard's panels (deploy/monitoring/grafana/dashboards/cvae-digits.json) drawn with
Pillow from the series a real Prometheus answered for their queries (tests/system/test_monitoring.py): no Grafana
needed.
Panels keep the dashboard's order and titles, three to a row; a stat panel shows its last values as text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLUMNS = 3
W, H = 560, 300  # one panel
PAD = 12
BACKGROUND, PANEL, GRID, TEXT, MUTED = (17, 18, 23), (24, 27, 31), (50, 54, 60), (220, 222, 226), (140, 144, 150)
COLOURS = [(115, 191, 105), (242, 204, 12), (87, 148, 242), (255, 120, 10), (242, 73, 92), (184, 119, 217),
           (138, 184, 255), (255, 152, 48), (150, 217, 141), (255, 166, 176)]  # fmt: skip


@dataclass
class Series:
    legend: str
    points: list[tuple[float, float]]  # (Unix seconds, value); NaN values are gaps


@dataclass
class Panel:
    title: str
    unit: str  # Grafana's: s, bytes, percentunit, reqps, short
    kind: str  # timeseries or stat
    series: list[Series]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default()


def shown(value: float, unit: str) -> str:
    """A value as the panel's unit shows it."""
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    suffix = " req/s" if unit == "reqps" else ""
    return f"{value:.3g}{suffix}"


def _timeseries(
    d: ImageDraw.ImageDraw, panel: Panel, box: tuple[int, int, int, int], small: ImageFont.ImageFont
) -> None:
    x0, y0, x1, y1 = box
    legend_rows = min(4, math.ceil(len(panel.series) / 2))
    plot = (x0 + 62, y0 + 6, x1 - 8, y1 - 14 * legend_rows - 22)
    values = [v for s in panel.series for _, v in s.points if math.isfinite(v)]
    times = [t for s in panel.series for t, _ in s.points]
    if not values or not times:
        d.text((x0 + 10, y0 + 10), "no data", fill=MUTED, font=small)
        return
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1
    t0, t1 = min(times), max(times)
    t1 = t1 if t1 > t0 else t0 + 1
    px0, py0, px1, py1 = plot
    for i in range(5):
        y = py1 - (py1 - py0) * i / 4
        d.line((px0, y, px1, y), fill=GRID)
        d.text((x0 + 4, y - 7), shown(low + (high - low) * i / 4, panel.unit), fill=MUTED, font=small)
    d.text((px0, py1 + 2), "0 s", fill=MUTED, font=small)
    d.text((px1 - 40, py1 + 2), f"{t1 - t0:.0f} s", fill=MUTED, font=small)

    def xy(t: float, v: float) -> tuple[float, float]:
        return px0 + (px1 - px0) * (t - t0) / (t1 - t0), py1 - (py1 - py0) * (v - low) / (high - low)

    for i, s in enumerate(panel.series):
        colour = COLOURS[i % len(COLOURS)]
        run: list[tuple[float, float]] = []
        for t, v in [*s.points, (math.nan, math.nan)]:
            if math.isfinite(v):
                run.append(xy(t, v))
                continue
            if len(run) > 1:
                d.line(run, fill=colour, width=2)
            elif run:
                d.point(run, fill=colour)
            run = []
        if i < 2 * legend_rows:
            lx = x0 + 10 + (i % 2) * (x1 - x0) // 2
            ly = py1 + 18 + 14 * (i // 2)
            d.rectangle((lx, ly + 4, lx + 10, ly + 8), fill=colour)
            d.text((lx + 14, ly), s.legend[:38], fill=TEXT, font=small)


def _stat(d: ImageDraw.ImageDraw, panel: Panel, box: tuple[int, int, int, int], font: ImageFont.ImageFont) -> None:
    x0, y0, _, _ = box
    for i, s in enumerate(panel.series[:6]):
        last = next((v for _, v in reversed(s.points) if math.isfinite(v)), math.nan)
        d.text((x0 + 12, y0 + 12 + 28 * i), f"{s.legend}: {shown(last, panel.unit)}", fill=COLOURS[0], font=font)


def draw(panels: list[Panel], title: str, out: Path) -> None:
    rows = math.ceil(len(panels) / COLUMNS)
    img = Image.new("RGB", (COLUMNS * (W + PAD) + PAD, 44 + rows * (H + PAD)), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((PAD, 12), title, fill=TEXT, font=_font(18))
    head, small, stat = _font(14), _font(11), _font(16)
    for i, panel in enumerate(panels):
        x, y = PAD + (i % COLUMNS) * (W + PAD), 44 + (i // COLUMNS) * (H + PAD)
        d.rectangle((x, y, x + W, y + H), fill=PANEL)
        d.text((x + 10, y + 8), panel.title[:70], fill=TEXT, font=head)
        box = (x, y + 30, x + W, y + H)
        if panel.kind == "stat":
            _stat(d, panel, box, stat)
        else:
            _timeseries(d, panel, box, small)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
