"""Screenshot a run's report.html with the same headless Chromium the browser test uses (for the README).

    .venv/bin/python demo/screenshot.py runs/quick demo/report.png
"""

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def main(run_dir: str, target: str) -> None:
    chromium = shutil.which("chromium") or sys.exit("needs Debian's chromium (make test installs it)")
    report = Path(run_dir, "report.html").resolve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1500})
        page.goto(report.as_uri())
        page.locator("details.question").first.evaluate("el => el.open = true")
        page.screenshot(path=target, full_page=False)
        browser.close()
    print(f"{target} written from {report}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
