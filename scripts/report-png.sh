#!/usr/bin/env bash
# Renders a report page (scripts/bench.sh --report DIR writes DIR/index.html)
# to a PNG with headless Chromium: the README's screenshot, and the test
# suite's check that the page renders.
#
#   scripts/report-png.sh DIR/index.html OUT.png [WIDTH]
#
# Needs chromium (Debian: apt-get install --no-install-recommends chromium).
# The page loads nothing from outside, and Chromium runs with networking
# off all the same.
set -euo pipefail
PROG=report-png
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

[ $# -ge 2 ] || die "usage: scripts/report-png.sh PAGE.html OUT.png [WIDTH]"
PAGE=$1
PNG=$2
WIDTH=${3:-1180}
[ -f "$PAGE" ] || die "$PAGE: no such page; write one with scripts/bench.sh --report DIR"
case "$WIDTH" in
    '' | *[!0-9]*) die "WIDTH $WIDTH: give pixels, like 1180" ;;
esac
BROWSER=""
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        BROWSER=$b
        break
    fi
done
[ -n "$BROWSER" ] || die "needs chromium for headless rendering; install it (apt-get install --no-install-recommends chromium)"

PAGE=$(cd "$(dirname "$PAGE")" && pwd)/$(basename "$PAGE")
mkdir -p "$(dirname "$PNG")"
PNG=$(cd "$(dirname "$PNG")" && pwd)/$(basename "$PNG")
# The whole page: tall enough for every chart and table of a --full run.
HEIGHT=$(awk '/<svg/ { n++ } /<tr>/ { r++ } END { printf "%d\n", 700 + n * 500 + r * 24 }' "$PAGE")
PROFILE=$(mktemp -d)
# shellcheck disable=SC2317  # invoked by the trap
cleanup() { rm -rf "$PROFILE"; }
trap cleanup EXIT
# --no-sandbox: the test suite runs as root, where Chromium's sandbox refuses to start.
timeout 120 "$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$PROFILE" --no-first-run --proxy-server='127.0.0.1:9' --proxy-bypass-list='<-loopback>' \
    --window-size="$WIDTH,$HEIGHT" --screenshot="$PNG" "file://$PAGE" >"$PROFILE/chromium.log" 2>&1 ||
    { sed 's/^/    /' "$PROFILE/chromium.log" >&2; die "chromium failed to render $PAGE"; }
[ -s "$PNG" ] || die "chromium wrote no $PNG"
note "wrote $PNG (${WIDTH}x$HEIGHT)"
