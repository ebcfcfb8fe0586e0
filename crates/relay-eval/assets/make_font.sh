#!/usr/bin/env bash
# Makes DejaVuSans-subset.ttf, the font the report's PNG plot draws its text with: DejaVu Sans
# cut down to printable ASCII and the few symbols the plot uses, so that it can be compiled
# into the binary (about 20 KB) and PNG rendering needs no system font.
# Needs: fonts-dejavu-core (apt) and fonttools (pip).
set -euo pipefail
cd "$(dirname "$0")"
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
pyftsubset "$src" \
    --unicodes="U+0020-007E,U+00B7,U+00D7,U+03C4,U+2012-2014,U+2212,U+2264,U+2265,U+2248,U+2026" \
    --layout-features='' --no-hinting --desubroutinize \
    --output-file=DejaVuSans-subset.ttf
