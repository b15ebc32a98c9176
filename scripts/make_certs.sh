#!/usr/bin/env bash
# Self-signed CA + SuperLink server certificate for TLS (flwr 1.41).
#   scripts/make_certs.sh [OUT_DIR] [EXTRA_SAN ...]
# OUT_DIR defaults to ./certs. The server cert always has SAN IP:127.0.0.1 and
# DNS:localhost; add the SuperLink's real name/address for other machines, e.g.
#   scripts/make_certs.sh certs IP:10.0.0.5 DNS:superlink.example.org
# Writes ca.crt ca.key server.pem server.key (server.csr, ca.srl). Give
#   SuperLink: --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key
#   SuperNode / flwr CLI: ca.crt only (--root-certificates / root-certificates = "...").
set -euo pipefail
OUT=${1:-certs}
shift || true
SAN="IP:127.0.0.1,DNS:localhost"
for s in "$@"; do SAN="$SAN,$s"; done
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$OUT"
cd "$OUT"
openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -new -x509 -key ca.key -sha256 -days 365 -subj "/O=fedagg/CN=fedagg test CA" -out ca.crt
openssl genrsa -out server.key 2048 2>/dev/null
openssl req -new -key server.key -subj "/O=fedagg/CN=localhost" -out server.csr
EXT=$(mktemp)
trap 'rm -f "$EXT"' EXIT
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$SAN" > "$EXT"
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem \
    -days 365 -sha256 -extfile "$EXT" 2>/dev/null
chmod 600 ca.key server.key
echo "make_certs.sh: wrote $(pwd)/{ca.crt,server.pem,server.key} (SAN $SAN)" >&2
