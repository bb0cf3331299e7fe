#!/bin/sh
# MinIO's TLS certificate for docker-compose.offsite.yml, made once: pgBackRest speaks to
# S3 only over HTTPS and checks the certificate against a CA (repo1-storage-ca-file), as
# pgmaint's S3 client does (objectStore.caFile). A CA of its own signs a certificate for
# the name "minio" (and localhost, for MinIO's health check); the CA's key is not kept.
#   sh minio-certs.sh CERTS_DIR CA_DIR
# CERTS_DIR gets MinIO's public.crt, private.key (mode 600) and CAs/ca.crt; CA_DIR gets
# ca.crt alone, for the services that only verify.
set -eu
certs="${1:?usage: minio-certs.sh CERTS_DIR CA_DIR}"
ca="${2:?usage: minio-certs.sh CERTS_DIR CA_DIR}"
if [ -s "$certs/public.crt" ] && [ -s "$certs/private.key" ] && [ -s "$ca/ca.crt" ]; then
  echo "minio-certs: $certs/public.crt is there already"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj /CN=pgmaint-compose-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj /CN=minio -keyout "$work/private.key" -out "$work/minio.csr" 2>/dev/null
printf '%s\n' 'subjectAltName=DNS:minio,DNS:localhost' 'basicConstraints=critical,CA:FALSE' \
  'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >"$work/ext"
openssl x509 -req -sha256 -days 825 -in "$work/minio.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -extfile "$work/ext" -out "$work/public.crt" 2>/dev/null
mkdir -p "$certs/CAs" "$ca"
install -m 644 "$work/ca.crt" "$certs/CAs/ca.crt"
install -m 644 "$work/ca.crt" "$ca/ca.crt"
install -m 600 "$work/private.key" "$certs/private.key"
# Last: its presence says the set is complete.
install -m 644 "$work/public.crt" "$certs/public.crt"
echo "minio-certs: made $certs/public.crt for minio, signed by $ca/ca.crt"
