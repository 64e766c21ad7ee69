#!/usr/bin/env bash
# Builds the Collector of builder.yaml once, into .governor/otelcol/otelcol-governor, with the
# OpenTelemetry Collector Builder (ocb) from the Go module proxy. Needs Go 1.26 or newer (the
# collector v0.165 modules say `go 1.26.0`): the machine's /usr/local/go is 1.26.8; Debian's
# golang-go (1.19) is too old. Prints the binary's path. A binary already built for this
# manifest is reused (its digest is kept beside it).
#
# Time on the 2-core build machine: ocb install 2.6 min, first Collector build 16.8 min wall
# (3.9 min user CPU: the rest was waiting on a busy machine and the module downloads); a rebuild
# with warm Go caches takes 38 s. `make test` runs this first (once; then the binary is reused),
# and tests/integration/test_ingest.py and bench/collector.py use the binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${GOVERNOR_OTELCOL_DIR:-$root/.governor/otelcol}"
manifest="$here/builder.yaml"
ocb_version="v0.165.0"
binary="$out/otelcol-governor"
digest="$(sha256sum "$manifest" | cut -d' ' -f1)"

if [ -x "$binary" ] && [ "$(cat "$out/manifest.sha256" 2>/dev/null)" = "$digest" ]; then
  echo "$binary"
  exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || {
  echo "build.sh: Go 1.26 or newer is needed to build the Collector (none on PATH)" >&2
  exit 1
}
export PATH="$PATH:$(go env GOPATH)/bin"
if ! command -v builder >/dev/null || ! builder version 2>/dev/null | grep -q "${ocb_version#v}"; then
  echo "build.sh: installing ocb $ocb_version" >&2
  go install "go.opentelemetry.io/collector/cmd/builder@$ocb_version"
fi
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s|^  # output_path is set by build.sh|  output_path: $tmp/dist|" "$manifest" > "$tmp/builder.yaml"
echo "build.sh: building the Collector (minutes the first time)" >&2
builder --config "$tmp/builder.yaml" >&2
install -m 0755 "$tmp/dist/otelcol-governor" "$binary"
echo "$digest" > "$out/manifest.sha256"
echo "$binary"
