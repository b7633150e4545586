#!/usr/bin/env bash
# Take a PNG screenshot of a resnext HTML report in headless Chromium, to look at by eye.
#
#   tools/report_screenshot.sh REPORT.html [OUT.png] [QUERY]
#
# QUERY sets the page's controls, as a link would: '?show=uncertain', '?label=crane',
# '?category=dog', '?sort=category' (runs with --categories),
# '?sort=confidence-asc', '?q=IMG_12', '?show=unreviewed', '?review=0'. WINDOW_SIZE (default
# 1280,900) sets the viewport, CHROMIUM the browser (default: chromium on the PATH; Debian:
# apt-get install -y chromium).
#
# REVIEW_KEYS shows the page mid-review: the keys are pressed on the page before the shot,
# separated by spaces, as Playwright names them ('a', '2', 's', 'j', '/', 'Enter'); 'type:TEXT'
# types TEXT (%20 for a space). It needs Playwright for Python (pip install -e '.[test]'):
#   REVIEW_KEYS='a a 2 s / type:snow%20leopard Enter' tools/report_screenshot.sh r.html
set -euo pipefail

report=${1:?usage: tools/report_screenshot.sh REPORT.html [OUT.png] [QUERY]}
out=${2:-${report%.html}.png}
query=${3:-}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$browser" ]; then
    echo "error: no chromium found (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 2
fi
if [ ! -f "$report" ]; then
    echo "error: no such report: '$report'" >&2
    exit 2
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
url=$(python3 -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).resolve().as_uri() + sys.argv[2])' "$report" "$query")
target=$(realpath -m -- "$out")

if [ -n "${REVIEW_KEYS:-}" ]; then
    # A fresh browser profile: no decisions but the keys' own.
    python3 - "$browser" "$url" "$target" "${WINDOW_SIZE:-1280,900}" "$REVIEW_KEYS" <<'PY'
import sys
from urllib.parse import unquote

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sys.exit("error: REVIEW_KEYS needs Playwright for Python (pip install -e '.[test]')")

browser, url, target, size, keys = sys.argv[1:]
width, height = (int(n) for n in size.split(","))
with sync_playwright() as pw:
    chromium = pw.chromium.launch(
        executable_path=browser,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              "--hide-scrollbars"],
    )
    page = chromium.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached")
    for key in keys.split():
        if key.startswith("type:"):
            page.keyboard.type(unquote(key[5:]))
        else:
            page.keyboard.press(key)
    page.wait_for_timeout(300)  # the scroll to the current card, and its thumbnails
    page.screenshot(path=target)
    chromium.close()
PY
else
    "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
        --run-all-compositor-stages-before-draw \
        --user-data-dir="$profile" --window-size="${WINDOW_SIZE:-1280,900}" \
        --virtual-time-budget=5000 --screenshot="$target" "$url" >/dev/null 2>&1
fi
if [ ! -s "$target" ]; then
    echo "error: chromium made no screenshot of '$report'" >&2
    exit 1
fi
echo "$target"
