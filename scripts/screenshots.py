"""Screenshots of the main pages for the README, taken by the browser tests.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Runs ``tests/web/test_browser.py`` (real ingestion, a real Celery worker, Chromium) with
``KP_SCREENSHOTS_DIR`` set, so each scenario saves its page as a PNG on the way: the chat with an
answer and its citations, the document list, a document's page, and the French home page.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="folder of the PNG files")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KP_SCREENSHOTS_DIR": str(out)}
    command = [sys.executable, "-m", "pytest", "tests/web/test_browser.py", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO, env=env, check=False)
    if result.returncode == 0:
        for png in sorted(out.glob("*.png")):
            print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
