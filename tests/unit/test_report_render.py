"""The backtest page in a real browser: headless Chromium (Debian's ``chromium`` package) opens it from file://,
every chart has drawn marks after layout, and a screenshot shows them.

Without Chromium these tests are skipped with the reason, unless ``FATIGUE_REQUIRE_CHROMIUM`` is set: then they
fail, so a CI that installs Chromium cannot pass without running them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from fatigue.backtest import Backtest, backtest_policy
from fatigue.generate import generate_events
from fatigue.report import AFTER_COLOR, render_html
from fatigue.testing import policy_named

INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian)"


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("FATIGUE_REQUIRE_CHROMIUM"):
        pytest.fail(f"FATIGUE_REQUIRE_CHROMIUM is set but no Chromium was found: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"headless Chromium is not installed: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    history = list(generate_events(3000, 120, seed=21))
    results = [backtest_policy(policy_named(name), history, label=name) for name in ("default", "reg-f", "tcpa")]
    page = render_html(Backtest("history.jsonl", results), note="generated history")
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(page, encoding="utf-8")
    return path, page.count('<svg class="chart"')


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=180, check=False)


def test_every_chart_renders(chromium, report, tmp_path):
    path, charts = report
    result = run_chromium(chromium, tmp_path / "profile", "--window-size=1280,2000", "--dump-dom", path.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout.decode()
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    total = re.search(r'data-charts-total="(\d+)"', dom)
    assert rendered and total, "the page's check script did not run"
    assert charts >= 10
    assert int(total.group(1)) == charts
    assert int(rendered.group(1)) == charts


def test_screenshot_shows_the_charts(chromium, report, tmp_path):
    path, _ = report
    shot = tmp_path / "shot.png"
    result = run_chromium(
        chromium, tmp_path / "profile", "--window-size=900,2400", f"--screenshot={shot}", path.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (900, 2400)
    colors = {pixels[index] for index in range(0, len(pixels), 7)}
    ink = sum(1 for index in range(0, len(pixels), 7) if pixels[index] != (255, 255, 255))
    assert len(colors) > 50, "the screenshot is (nearly) blank"
    assert ink > len(pixels) // 7 // 20
    after = tuple(int(AFTER_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    # the blue bars of the comparison charts and of the first policy's charts
    assert sum(1 for pixel in pixels if pixel == after) > 200


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) -> (width, height, RGB pixels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, b""
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            chunks += body
    raw = zlib.decompress(chunks)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    offset = 0
    for _ in range(height):
        kind, line = raw[offset], bytearray(raw[offset + 1 : offset + 1 + stride])
        offset += 1 + stride
        if kind == 1:
            for x in range(channels, stride):
                line[x] = (line[x] + line[x - channels]) & 0xFF
        elif kind == 2:
            for x in range(stride):
                line[x] = (line[x] + previous[x]) & 0xFF
        elif kind == 3:
            for x in range(stride):
                left = line[x - channels] if x >= channels else 0
                line[x] = (line[x] + ((left + previous[x]) >> 1)) & 0xFF
        elif kind == 4:
            for x in range(stride):
                a = line[x - channels] if x >= channels else 0
                b = previous[x]
                c = previous[x - channels] if x >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.extend(zip(line[0::channels], line[1::channels], line[2::channels], strict=True))
        previous = line
    return width, height, pixels
