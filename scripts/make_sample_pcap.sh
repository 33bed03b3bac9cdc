#!/usr/bin/env bash
# make_sample_pcap.sh - record a small, real HTTP/1.1 capture for wirespan.
#
# What it makes
#   A classic libpcap file (default: pcaps/sample-http1.pcap, < 300 KB) with
#   plain-text HTTP/1.1 between curl and nginx: ARP/NDP, TCP handshakes,
#   keep-alive connections carrying several requests each, a POST with a
#   body, a 404, a 204, a HEAD, one connection over IPv6, a ~20 KB response
#   spanning many wire-sized segments, and FIN teardowns.  Requests carry
#   trace-context headers (W3C traceparent, B3 multi-header, B3 single
#   header, x-request-id) so the tracer has something to correlate.
#
# Topology (everything lives in two throw-away network namespaces that this
# script creates and deletes; nothing touches the host's own interfaces,
# routes or addresses, and no packet leaves these namespaces):
#
#     netns ws-cli-<PID>                      netns ws-srv-<PID>
#     +--------------------+                  +------------------------+
#     | curl               |                  | nginx :8080 (private   |
#     | wscli<PID>         |<---- veth ------>|   config in a tmp dir) |
#     |  10.99.0.1/24      |                  | wssrv<PID>             |
#     |  fd00:99::1/64     |                  |  10.99.0.2/24          |
#     +--------------------+                  |  fd00:99::2/64         |
#                                             | tcpdump -i wssrv<PID>  |
#                                             +------------------------+
#
#   Offloads (TSO/GSO/GRO) are turned off on both veth ends so the capture
#   shows MTU-sized segments as a real wire would.
#
# Requests made (HTTP/1.1, deterministic content), 4 TCP connections:
#   conn 1 (IPv4, keep-alive, one curl run):
#     GET  /api/user.json   traceparent: 00-4bf92f...-00f067aa0ba902b7-01
#     GET  /static/big.txt  X-B3-TraceId/X-B3-SpanId/X-B3-Sampled (~20 KB body)
#     GET  /missing         b3: 80f198ee...-e457b5a2e4d86bd1-1   -> 404
#   conn 2 (IPv4, keep-alive):
#     POST /api/orders      x-request-id, small JSON body        -> 201
#     GET  /healthz         x-request-id                         -> 204
#   conn 3 (IPv6, keep-alive):
#     GET  /api/user.json   traceparent (another span)
#     GET  /static/big.txt  b3 single header
#   conn 4 (IPv4, Connection: close):
#     HEAD /static/big.txt  x-request-id
#
# Usage (as root; needs iproute2, tcpdump, nginx-light, curl; ethtool optional):
#   sudo scripts/make_sample_pcap.sh                 # -> pcaps/sample-http1.pcap
#   sudo scripts/make_sample_pcap.sh /tmp/out.pcap   # custom output path
#
#   On Debian:  apt-get install -y nginx-light tcpdump curl iproute2 [ethtool]
#   Clean-up (processes, namespaces, temp dir) runs on exit, also on failure.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
OUT="${1:-${REPO_ROOT}/pcaps/sample-http1.pcap}"

NS_CLI="ws-cli-$$"
NS_SRV="ws-srv-$$"
# Interface names are limited to 15 chars; "wscli" + PID (<= 7 digits) fits.
IF_CLI="wscli$$"
IF_SRV="wssrv$$"
CLI4=10.99.0.1
SRV4=10.99.0.2
CLI6=fd00:99::1
SRV6=fd00:99::2
PORT=8080

log() { printf '[make_sample_pcap] %s\n' "$*" >&2; }
die() { printf '[make_sample_pcap] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- checks ---
if [[ "$(id -u)" -ne 0 ]]; then
    die "must run as root (it creates network namespaces and captures packets); try: sudo $0 ${*}"
fi

missing=()
need() { # need CMD DEBIAN_PACKAGE
    if ! command -v "$1" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$1" && ! -x "/sbin/$1" ]]; then
        missing+=("$1 (Debian package: $2)")
    fi
}
need ip      iproute2
need tcpdump tcpdump
need nginx   nginx-light
need curl    curl
if ((${#missing[@]})); then
    for m in "${missing[@]}"; do log "missing tool: $m"; done
    die "install with: apt-get install -y nginx-light tcpdump curl iproute2"
fi
# nginx / tcpdump / ip often live in /usr/sbin, which may not be on a user PATH.
export PATH="${PATH}:/usr/sbin:/sbin"

# --------------------------------------------------------------- clean-up ---
TMP=""
NGINX_PID=""
TCPDUMP_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for pid in "$TCPDUMP_PID" "$NGINX_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    # Anything else still running inside our own namespaces (e.g. nginx workers).
    for ns in "$NS_CLI" "$NS_SRV"; do
        if ip netns list 2>/dev/null | grep -qw -- "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
            ip netns del "$ns" 2>/dev/null
        fi
    done
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf -- "$TMP"
    if [[ $rc -ne 0 ]]; then log "failed (exit $rc); namespaces and temp files removed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMP="$(mktemp -d /tmp/wirespan-pcap.XXXXXX)"
# nginx workers run as an unprivileged user and must read the docroot.
chmod 755 "$TMP"

# ------------------------------------------------------------- topology ---
log "creating namespaces $NS_CLI / $NS_SRV"
ip netns add "$NS_CLI"
ip netns add "$NS_SRV"
# Keep IPv6 quiet and predictable (no router solicitations, no autoconf, no
# DAD probes for the link-local addresses, which would land at random times);
# "default" must be set before the veth ends appear in the namespace.
for ns in "$NS_CLI" "$NS_SRV"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 \
        net.ipv6.conf.default.router_solicitations=0 \
        net.ipv6.conf.default.accept_ra=0 \
        net.ipv6.conf.default.autoconf=0 \
        net.ipv6.conf.default.accept_dad=0 \
        net.ipv6.conf.default.dad_transmits=0 >/dev/null 2>&1 || true
done
ip link add "$IF_CLI" netns "$NS_CLI" type veth peer name "$IF_SRV" netns "$NS_SRV"

in_cli() { ip netns exec "$NS_CLI" "$@"; }
in_srv() { ip netns exec "$NS_SRV" "$@"; }

for side in cli srv; do
    if [[ $side == cli ]]; then ns=$NS_CLI; ifc=$IF_CLI; a4=$CLI4; a6=$CLI6
    else                        ns=$NS_SRV; ifc=$IF_SRV; a4=$SRV4; a6=$SRV6; fi
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$a4/24" dev "$ifc"
    ip -n "$ns" addr add "$a6/64" dev "$ifc" nodad
    # Wire-sized segments: disable segmentation / receive offloads.
    if command -v ethtool >/dev/null 2>&1; then
        ip netns exec "$ns" ethtool -K "$ifc" tso off gso off gro off >/dev/null 2>&1 \
            || log "warning: ethtool -K failed on $ifc (continuing)"
    else
        ip -n "$ns" link set dev "$ifc" gso_max_size 1500 >/dev/null 2>&1 \
            || log "warning: could not limit gso_max_size on $ifc (install ethtool for exact segments)"
    fi
    ip -n "$ns" link set "$ifc" up
done

# --------------------------------------------------------------- server ---
mkdir -p "$TMP/www/api" "$TMP/www/static" "$TMP/logs" "$TMP/tmp"
printf '{"id":42,"name":"Ada Lovelace","email":"ada@example.test","roles":["admin","dev"]}\n' \
    >"$TMP/www/api/user.json"
{
    printf 'wirespan sample payload - a deterministic ~20 KB text body.\n'
    for i in $(seq 1 300); do
        printf 'line %04d: the quick brown fox jumps over the lazy dog 0123456789\n' "$i"
    done
} >"$TMP/www/static/big.txt"
chmod -R a+rX "$TMP/www"
# Fixed mtimes so Last-Modified / ETag are the same on every run.
find "$TMP/www" -type f -exec touch -d '2024-01-01 00:00:00 UTC' {} +

cat >"$TMP/nginx.conf" <<NGINX
# Private config for make_sample_pcap.sh; not the system nginx.
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/logs/error.log warn;

events { worker_connections 64; }

http {
    types {
        application/json json;
        text/plain       txt;
        text/html        html;
    }
    default_type application/octet-stream;
    access_log $TMP/logs/access.log;
    client_body_temp_path $TMP/tmp/body;
    proxy_temp_path       $TMP/tmp/proxy;
    fastcgi_temp_path     $TMP/tmp/fastcgi;
    uwsgi_temp_path       $TMP/tmp/uwsgi;
    scgi_temp_path        $TMP/tmp/scgi;

    sendfile off;            # plain writes, simplest segment layout
    server_tokens off;       # "Server: nginx" without the version
    keepalive_timeout 30s;
    keepalive_requests 100;
    etag on;

    server {
        listen $PORT;
        listen [::]:$PORT;
        server_name sample.test;
        root $TMP/www;

        location = /healthz    { return 204; }
        location = /api/orders {
            default_type application/json;
            return 201 '{"order_id":1001,"status":"created"}\n';
        }
        location / { try_files \$uri =404; }
    }
}
NGINX

log "starting nginx in $NS_SRV"
# Call "ip netns exec" directly (not via the in_srv function, which would fork a
# subshell) so that $! is the PID of nginx / tcpdump themselves.
ip netns exec "$NS_SRV" nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/logs/error.log" \
    >"$TMP/logs/nginx.out" 2>&1 &
NGINX_PID=$!

# Wait until nginx listens on both address families (no probe traffic).
for i in $(seq 1 50); do
    if in_srv ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
        [[ $(in_srv ss -Hltn "sport = :$PORT" | wc -l) -ge 2 ]] && break
    fi
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$TMP/logs/nginx.out" "$TMP/logs/error.log" >&2 2>/dev/null; die "nginx exited"; }
    [[ $i -eq 50 ]] && die "nginx did not start listening on :$PORT"
    sleep 0.1
done

# -------------------------------------------------------------- capture ---
CAP="$TMP/capture.pcap"
log "starting tcpdump on $IF_SRV in $NS_SRV"
# -Z root: write as root into our temp dir (Debian's tcpdump drops to user
# 'tcpdump' otherwise).  Classic pcap (not pcapng), full snaplen, per-packet
# flush; --immediate-mode so no packet is still sitting in the kernel ring
# buffer (TPACKET_V3 hands blocks over only every ~1 s) when we stop it.  The filter keeps the HTTP traffic plus ARP and IPv6 neighbour
# discovery (NS/NA), dropping timing-dependent MLD chatter.
ip netns exec "$NS_SRV" tcpdump -i "$IF_SRV" -nn -s 0 -U --immediate-mode -Z root -w "$CAP" \
    "tcp port $PORT or arp or (icmp6 and (ip6[40] == 135 or ip6[40] == 136))" >"$TMP/logs/tcpdump.out" 2>&1 &
TCPDUMP_PID=$!
for i in $(seq 1 50); do
    grep -q 'listening on' "$TMP/logs/tcpdump.out" 2>/dev/null && break
    kill -0 "$TCPDUMP_PID" 2>/dev/null || { cat "$TMP/logs/tcpdump.out" >&2; die "tcpdump exited"; }
    [[ $i -eq 50 ]] && die "tcpdump did not become ready"
    sleep 0.1
done
sleep 0.5   # let the capture socket settle before the first packet

# -------------------------------------------------------------- traffic ---
TRACE_ID=4bf92f3577b34da6a3ce929d0e0e4736
B3_TRACE=80f198ee56343ba864fe8b2a57d3eff7
B3_SPAN=e457b5a2e4d86bd1
CURL=(curl --http1.1 --silent --show-error --output /dev/null
      --write-out '  %{http_code} %{method} %{url_effective} (conn #%{num_connects} new)\n'
      --user-agent 'wirespan-sample/1.0' --max-time 10 --noproxy '*')

log "traffic: conn 1 (IPv4 keep-alive, 3 requests)"
in_cli "${CURL[@]}" \
    -H "traceparent: 00-${TRACE_ID}-00f067aa0ba902b7-01" \
    "http://${SRV4}:${PORT}/api/user.json" \
    --next "${CURL[@]:1}" \
    -H "X-B3-TraceId: ${B3_TRACE}" -H "X-B3-SpanId: ${B3_SPAN}" -H 'X-B3-Sampled: 1' \
    "http://${SRV4}:${PORT}/static/big.txt" \
    --next "${CURL[@]:1}" \
    -H "b3: ${B3_TRACE}-${B3_SPAN}-1" \
    "http://${SRV4}:${PORT}/missing"
sleep 0.2

log "traffic: conn 2 (IPv4 keep-alive, POST + 204)"
in_cli "${CURL[@]}" \
    -H 'x-request-id: 7f3c2a10-5b1e-4c8d-9a6f-0e2d4b8c1a55' \
    -H 'Content-Type: application/json' \
    --data-raw '{"item":"widget","qty":3}' \
    "http://${SRV4}:${PORT}/api/orders" \
    --next "${CURL[@]:1}" \
    -H 'x-request-id: 7f3c2a10-5b1e-4c8d-9a6f-0e2d4b8c1a56' \
    "http://${SRV4}:${PORT}/healthz"
sleep 0.2

log "traffic: conn 3 (IPv6 keep-alive, 2 requests)"
in_cli "${CURL[@]}" -g \
    -H "traceparent: 00-${TRACE_ID}-b7ad6b7169203331-01" \
    "http://[${SRV6}]:${PORT}/api/user.json" \
    --next "${CURL[@]:1}" -g \
    -H "b3: ${B3_TRACE}-b7ad6b7169203331-1" \
    "http://[${SRV6}]:${PORT}/static/big.txt"
sleep 0.2

log "traffic: conn 4 (IPv4, HEAD, Connection: close)"
in_cli "${CURL[@]}" --head \
    -H 'x-request-id: 7f3c2a10-5b1e-4c8d-9a6f-0e2d4b8c1a57' \
    -H 'Connection: close' \
    "http://${SRV4}:${PORT}/static/big.txt"

sleep 1     # let the last ACKs/FINs hit the wire and reach tcpdump

# ----------------------------------------------------------------- stop ---
kill -INT "$TCPDUMP_PID"
for _ in $(seq 1 50); do kill -0 "$TCPDUMP_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$TCPDUMP_PID" 2>/dev/null && { log "tcpdump ignored SIGINT; sending SIGTERM"; kill -TERM "$TCPDUMP_PID"; }
wait "$TCPDUMP_PID" || true
TCPDUMP_PID=""
grep -E 'packets (captured|received|dropped)' "$TMP/logs/tcpdump.out" >&2 || true
# Sanity check: every connection must be in the file, each with its FIN.
NFIN="$(tcpdump -nn -r "$CAP" 'tcp[tcpflags] & tcp-fin != 0 or (ip6 and ip6[53] & 1 != 0)' 2>/dev/null | wc -l)"
[[ "$NFIN" -ge 8 ]] || die "capture looks incomplete: $NFIN FIN segments, expected 8 (2 per connection)"

mkdir -p "$(dirname -- "$OUT")"
cp -- "$CAP" "$OUT"
chmod 644 "$OUT"

PKTS="$(tcpdump -nn -r "$OUT" 2>/dev/null | wc -l)"
SIZE="$(stat -c %s "$OUT")"
log "wrote $OUT"
echo "packets: $PKTS"
echo "size:    $SIZE bytes"
