#!/usr/bin/env bash
# Makes buf/validate/validate.proto available to buf without the Buf Schema
# Registry: the file ships in the protovalidate Go module, which the module
# proxy serves. The checksum below pins exactly which copy we build against;
# bump it together with buf.build/go/protovalidate in go.mod.
set -euo pipefail

module=github.com/bufbuild/protovalidate
version=v1.2.2
want_sum='h1:2H/9/Kr97etSRqW3IJjTTb09z+zutkK2GDhDRbOnqr4='

root=$(cd "$(dirname "$0")/.." && pwd)
info=$(cd "$root/tools" && go mod download -json "$module@$version")
dir=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
sum=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')

if [ "$sum" != "$want_sum" ]; then
  echo "protodeps: $module@$version has sum $sum, want $want_sum" >&2
  exit 1
fi
if [ ! -f "$dir/proto/protovalidate/buf/validate/validate.proto" ]; then
  echo "protodeps: validate.proto missing from $dir" >&2
  exit 1
fi

mkdir -p "$root/.protodeps"
ln -sfn "$dir/proto/protovalidate" "$root/.protodeps/protovalidate"
