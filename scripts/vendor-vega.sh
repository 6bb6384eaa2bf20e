#!/usr/bin/env bash
# Refetches the JavaScript the report embeds (collector/assets/vega/: Vega, Vega-Lite and
# vega-embed, minified, with their licences) from the npm registry at the pinned versions,
# checking each tarball against the registry's published sha512 integrity. Run it to update the
# versions below; the files are committed, so building the collector needs no network.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/collector/assets/vega"
packages=(
  "vega 6.4.0 rHXCq2LpEWCLMjXBEj7hocY9G0/i5TGYRayGGSj06VTF4+l2IG2Z7oeZKCjWbUh/7hTE/mVhbaOPB72wCElh6g=="
  "vega-lite 6.5.0 fMXF6s0MrIg0UTWnLIfeFtgSLzVhyzSKobzGrh5rhS+mL6FOYFG3m7ouJ4U23gj65EK+gl9FIIT5w7wLNaAzkA=="
  "vega-embed 7.3.0 wQ8s5GaSzqoKgmRfbRolgBrjE2CP7ZKHXqH7NijxMqPjpdWxSs4Dn8tvp9g0giQvh2cK+3p56sxjWWM0wNngGw=="
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
: > "$out/VERSIONS"
for entry in "${packages[@]}"; do
  read -r name version integrity <<< "$entry"
  tarball="$tmp/$name.tgz"
  curl -fsSL "https://registry.npmjs.org/$name/-/$name-$version.tgz" -o "$tarball"
  got=$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)
  if [[ "$got" != "$integrity" ]]; then
    echo "vendor-vega: $name $version: sha512 $got, the registry publishes $integrity" >&2
    exit 1
  fi
  mkdir -p "$tmp/$name"
  tar xzf "$tarball" -C "$tmp/$name"
  cp "$tmp/$name/package/build/$name.min.js" "$out/$name.min.js"
  cp "$tmp/$name/package/LICENSE" "$out/LICENSE-$name"
  echo "$name $version sha512-$integrity" >> "$out/VERSIONS"
done
echo "vendor-vega: $(cat "$out/VERSIONS" | wc -l) packages in $out" >&2
