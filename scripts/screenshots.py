"""The README's screenshots, taken the way a user sees things (needs Debian's `chromium`).

    python scripts/screenshots.py terminal CAPTURE.ansi OUT.png [--title T]   # a tmux capture-pane -e
    python scripts/screenshots.py page URL OUT.png [--width 1400 --height 1000]  # e.g. an MLflow run page

`terminal` renders a real terminal's capture (ANSI colours kept) with rich into an SVG at the
capture's width, and has headless Chromium photograph it; `page` has headless Chromium load the
page, let its scripts run, and photograph it. Neither changes anything it looks at.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("error: no chromium on PATH (Debian: apt-get install chromium)")


def shoot(url: str, out: Path, width: int, height: int, budget_ms: int = 20000) -> None:
    with tempfile.TemporaryDirectory(prefix="trainer-shot-") as profile:
        cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out.resolve()}", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"error: chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    small(out)


def small(png: Path, colors: int = 96) -> None:
    """A palette PNG: screenshots are flat colours, so this keeps them readable at a third of the size."""
    from PIL import Image

    with Image.open(png) as im:
        im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def terminal(capture: Path, out: Path, title: str) -> None:
    from rich.console import Console
    from rich.text import Text

    text = capture.read_text()
    lines = text.rstrip("\n").splitlines()
    while lines and not Text.from_ansi(lines[-1]).plain.strip():
        lines.pop()
    width = max(80, max((len(Text.from_ansi(line).plain) for line in lines), default=80))
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=open("/dev/null", "w"))
    for line in lines:
        console.print(Text.from_ansi(line), soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="trainer-term-") as tmp:
        svg = Path(tmp) / "term.svg"
        console.save_svg(str(svg), title=title)
        # The SVG's own size: rich writes a viewBox; a page a little larger shows it whole.
        head = svg.read_text()[:2000]
        box = head.split('viewBox="')[1].split('"')[0].split()
        w, h = int(float(box[2])) + 4, int(float(box[3])) + 4
        html = Path(tmp) / "term.html"
        html.write_text(f'<html><body style="margin:0;background:#fff"><img src="term.svg" width="{w - 4}"></body></html>')
        shoot(html.as_uri(), out, w, h, budget_ms=2000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("terminal")
    t.add_argument("capture", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--title", default="trainer")
    pg = sub.add_parser("page")
    pg.add_argument("url")
    pg.add_argument("out", type=Path)
    pg.add_argument("--width", type=int, default=1400)
    pg.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    if args.what == "terminal":
        terminal(args.capture, args.out, args.title)
    else:
        shoot(args.url, args.out, args.width, args.height)
    print(args.out)


if __name__ == "__main__":
    main()
