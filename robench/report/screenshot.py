"""A PNG of a report page, rendered offline by a headless Chromium."""

from __future__ import annotations

from pathlib import Path

from robench.errors import RobenchError
from robench.paths import make_dir


def find_browser(browser: str | None = None) -> str:
    """The headless Chromium a screenshot uses (checked before any report is written); RobenchError if none."""
    import shutil

    exe = browser or next((b for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                           if shutil.which(b)), None)
    if exe is None or not shutil.which(exe):
        raise RobenchError("a screenshot needs a headless Chromium: install Debian's `chromium` package "
                           "(apt-get install chromium) or google-chrome")
    return exe


def screenshot(html_path, png_path, width: int = 1280, height: int = 2400, browser: str | None = None) -> Path:
    """Render a report page to PNG with a headless Chromium (Debian's `chromium`, or google-chrome), offline.
    RobenchError when no such browser is installed or it fails."""
    import subprocess
    import tempfile

    exe = find_browser(browser)
    png_path = Path(png_path).resolve()
    make_dir(png_path.parent, "screenshot directory")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png_path}",
               f"--window-size={width},{height}", Path(html_path).resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise RobenchError(f"{exe} took more than 180 s to render {html_path}") from None
    if not png_path.is_file():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RobenchError(f"{exe} did not write {png_path} (exit {proc.returncode}: {tail[0]})")
    return png_path
