# A development PKI with openssl: sourced by scripts/run.sh (the local fleet) and the
# benchmarks. P-256 keys; the broker's certificate names localhost and 127.0.0.1; clients
# (devices, the backend) are named by their CN, which the broker takes as the user name.
# Not for production: the CA key sits next to the certificates.
#
#   pki_ca DIR CN DAYS            DIR/ca.pem, DIR/ca.key
#   pki_cert DIR FILE CN ROLE DAYS  DIR/FILE.pem, DIR/FILE.key; ROLE is server or client

pki_ca() {
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$3" \
        -keyout "$1/ca.key" -out "$1/ca.pem" -subj "/CN=$2" 2>/dev/null
    chmod 600 "$1/ca.key"
}

pki_cert() {
    local dir="$1" file="$2" cn="$3" role="$4" days="$5" ext
    case "$role" in
        server) ext='basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' ;;
        client) ext='basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' ;;
        *) echo "pki_cert: role must be server or client, not '$role'" >&2; return 1 ;;
    esac
    mkdir -p "$(dirname "$dir/$file")"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$dir/$file.key" -out "$dir/$file.csr" -subj "/CN=$cn" 2>/dev/null
    printf '%b' "$ext" > "$dir/$file.ext"
    openssl x509 -req -in "$dir/$file.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days "$days" -out "$dir/$file.pem" -extfile "$dir/$file.ext" 2>/dev/null
    rm -f "$dir/$file.csr" "$dir/$file.ext"
    chmod 600 "$dir/$file.key"
}
