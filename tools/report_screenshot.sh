#!/usr/bin/env bash
# Take a PNG screenshot of a resnext HTML report in headless Chromium, to look at by eye.
#
#   tools/report_screenshot.sh REPORT.html [OUT.png] [QUERY]
#
# QUERY sets the page's controls, as a link would: '?show=uncertain', '?label=crane',
# '?category=dog', '?sort=category' (runs with --categories),
# '?sort=confidence-asc', '?q=IMG_12'. WINDOW_SIZE (default 1280,900) sets the viewport,
# CHROMIUM the browser (default: chromium on the PATH; Debian: apt-get install -y chromium).
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

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --run-all-compositor-stages-before-draw \
    --user-data-dir="$profile" --window-size="${WINDOW_SIZE:-1280,900}" \
    --virtual-time-budget=5000 --screenshot="$target" "$url" >/dev/null 2>&1
if [ ! -s "$target" ]; then
    echo "error: chromium made no screenshot of '$report'" >&2
    exit 1
fi
echo "$target"
