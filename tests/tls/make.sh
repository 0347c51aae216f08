#!/bin/sh
# Makes the TLS test certificates in this folder (run from anywhere; needs
# the openssl command, version 1.1.1 or newer):
#
#   cert.pem, key.pem        the test server's self-signed certificate and
#                            its key: CN=localhost, valid for localhost,
#                            127.0.0.1 and ::1. Clients trust it with
#                            --cafile tests/tls/cert.pem.
#   other-ca.pem             an unrelated self-signed CA: a client trusting
#                            only it must refuse the server (its key is
#                            thrown away).
#   wrong-name-cert.pem,     a self-signed certificate for other.invalid
#   wrong-name-key.pem       only: a client connecting to 127.0.0.1 must
#                            refuse it (hostname check).
#
# Each is valid from 2000-01-01 for 36500 days from the day it was made, so
# that a machine whose clock is off does not find it "not yet valid"
# ("openssl ca" is used because it can set that start date).
#
# Test keys only: they are public, in the repository. Never use them for a
# real server. The certificates are marked as CA (critical basic
# constraints, key identifiers), as strict verifiers such as Python 3.13's
# default context require of a self-signed certificate used as its own CA.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/openssl.cnf" <<CONF
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
default_ca = test_ca
[test_ca]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
[server]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
[other_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[wrong_name]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:other.invalid
CONF

# make CERT KEY SUBJECT SECTION: a new P-256 key and a self-signed
# certificate for it, with the extensions of SECTION.
make() {
    : > "$work/index.txt"
    openssl rand -hex 16 > "$work/serial"
    openssl req -new -config "$work/openssl.cnf" \
        -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$2" -out "$work/request.pem" -subj "$3"
    openssl ca -batch -config "$work/openssl.cnf" -selfsign -notext \
        -keyfile "$2" -in "$work/request.pem" -out "$1" -extensions "$4" \
        -startdate 20000101000000Z -days 36500
    chmod 644 "$1" "$2"  # test files: readable on purpose
}

make cert.pem key.pem "/CN=localhost" server
make other-ca.pem "$work/other-ca-key.pem" "/CN=Unrelated test CA" other_ca
make wrong-name-cert.pem wrong-name-key.pem "/CN=other.invalid" wrong_name
