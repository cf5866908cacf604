#!/bin/sh
# Writes hash.txt: twemproxy's twelve key hashes of every key in route.txt,
# computed by twemproxy's own C code (src/hashkit of the given source tree)
# compiled with the system's cc, linked to hash_gen.c.
#
#   sh crates/route/tests/golden/hash_gen.sh TWEMPROXY_SOURCE_DIR
#
# TWEMPROXY_SOURCE_DIR is a twemproxy checkout (e.g. tag 0.5.0). Builds in a
# temporary directory, which is removed on exit.
set -eu
src=${1:?usage: hash_gen.sh TWEMPROXY_SOURCE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
# The hash files include nc_core.h only for integer types and string.h.
printf '#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n#include <sys/types.h>\n' \
    > "$work/nc_core.h"
set --
for f in one_at_a_time md5 crc16 crc32 fnv hsieh murmur jenkins; do
    set -- "$@" "$src/src/hashkit/nc_$f.c"
done
cc -O1 -w -I"$work" -o "$work/hash_gen" "$here/hash_gen.c" "$@"
{
    echo "# twemproxy's key hashes, from its own src/hashkit C code ($(cc --version | head -1),"
    echo "# $(uname -m)), by: sh crates/route/tests/golden/hash_gen.sh TWEMPROXY_SOURCE_DIR"
    echo "# Source: $(git -C "$src" describe --tags --always 2>/dev/null || echo "$src")"
    echo "# Per line: key in hex, then one_at_a_time md5 crc16 crc32 crc32a fnv1_64"
    echo "# fnv1a_64 fnv1_32 fnv1a_32 hsieh murmur jenkins, each as 8 hex digits."
    sed -n 's/^key \{0,1\}//p' "$here/route.txt" | "$work/hash_gen"
} > "$here/hash.txt.new"
mv "$here/hash.txt.new" "$here/hash.txt"
