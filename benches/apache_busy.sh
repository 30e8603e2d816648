#!/bin/bash
# Requests read while their worker's threads all got busy (README, "A request read
# while its worker's threads all got busy"), behind a private Apache (mod_proxy_fcgi,
# which writes BEGIN_REQUEST on its own, so about a third of its requests reach postern
# in parts), side by side for two postern binaries, interleaved rounds:
#
#   hol: --workers 2 --threads 2; wrk -c8 for 14 s on a quick page beside 12 rounds of
#        two concurrent 1 s requests: the quick page's p99 and max (wrk), and how many
#        quick requests took over 100 ms (postern's access log).
#   sat: --workers 2 --threads 1, --access-log off; wrk -c8 for 8 s on the quick page
#        (saturated): requests, context switches per request of postern's processes
#        (perf stat), and the "is busy" INFO lines (at most one a second).
#
# Usage: bash benches/apache_busy.sh BASE_BIN NEW_BIN [ROUNDS]   (needs apache2, wrk,
# curl, perf; run as root; ports 47710-47711). Timings are the machine's: compare the
# two binaries within one run only.
set -u
BASE=$1; NEW=$2; ROUNDS=${3:-2}
DIR=$(mktemp -d /tmp/apache-busy.XXXXXX)
chmod 755 "$DIR"
trap 'pkill -f "fastcgi 127.0.0.1:47711"; [ -f "$DIR/httpd.pid" ] && kill "$(cat "$DIR/httpd.pid")"; sleep 0.5; rm -rf "$DIR"' EXIT
cat > "$DIR/app.py" <<'EOF'
import os, time
def application(environ, start_response):
    if environ["PATH_INFO"].endswith("/sleep"):
        time.sleep(float(environ["QUERY_STRING"] or 1))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF
MODS=/usr/lib/apache2/modules
cat > "$DIR/httpd.conf" <<EOF
ServerRoot $DIR
Listen 127.0.0.1:47710
LoadModule mpm_event_module $MODS/mod_mpm_event.so
LoadModule authz_core_module $MODS/mod_authz_core.so
LoadModule proxy_module $MODS/mod_proxy.so
LoadModule proxy_fcgi_module $MODS/mod_proxy_fcgi.so
<IfModule !unixd_module>
LoadModule unixd_module $MODS/mod_unixd.so
</IfModule>
PidFile $DIR/httpd.pid
ErrorLog $DIR/error.log
ServerName localhost
User www-data
Group www-data
ProxyPass "/wfn/" "fcgi://127.0.0.1:47711/" flushpackets=on
EOF
apache2 -f "$DIR/httpd.conf" -k start
sleep 1

start() { # BIN THREADS EXTRA...
    pkill -f "fastcgi 127.0.0.1:47711"; sleep 0.5
    (cd "$DIR" && setsid "$1" --fastcgi 127.0.0.1:47711 --workers 2 --threads "$2" "${@:3}" app:application > "$DIR/postern.log" 2>&1 &)
    sleep 2
    curl -s -o /dev/null localhost:47710/wfn/x
}

hol() {
    start "$1" 2
    ( for _ in $(seq 1 12); do for _ in 1 2; do curl -s -o /dev/null "localhost:47710/wfn/sleep?1" & done; wait; done ) &
    out=$(wrk -t2 -c8 -d14s --latency http://127.0.0.1:47710/wfn/x)
    wait
    p99=$(echo "$out" | awk '/^ +99%/ {print $2}')
    max=$(echo "$out" | awk '/^ +Latency / {print $4}')
    slow=$(grep 'path=/wfn/x' "$DIR/postern.log" | awk '{for(i=1;i<=NF;i++) if($i ~ /^ms=/){split($i,a,"="); if (a[2]+0 > 100) n++}} END {print n+0}')
    echo "hol $(basename "$1"): p99=$p99 max=$max quick_over_100ms=$slow"
}

sat() {
    start "$1" 1 --access-log off
    pids=$(pgrep -f "fastcgi 127.0.0.1:47711" | paste -sd,)
    perf stat -e context-switches -p "$pids" -o "$DIR/perf.out" -- sleep 8 &
    out=$(wrk -t2 -c8 -d8s http://127.0.0.1:47710/wfn/x)
    wait
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    cs=$(awk '/context-switches/ {gsub(",","",$1); print $1}' "$DIR/perf.out")
    echo "sat $(basename "$1"): requests=$reqs cs_per_request=$(python3 -c "print(round($cs/$reqs,2))") busy_lines=$(grep -c 'is busy' "$DIR/postern.log")"
}

for _ in $(seq 1 "$ROUNDS"); do
    hol "$BASE"; hol "$NEW"
    sat "$BASE"; sat "$NEW"
done
