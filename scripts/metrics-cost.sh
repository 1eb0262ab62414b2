#!/bin/sh
# metrics-cost.sh: the metrics' CPU cost per message. Two daemons with the
# same filters, one with metrics off (http.listen = "") and one with them
# on, get the same corpus from milterbench in turn, ROUNDS times; each run
# prints the daemon's CPU time per message.
#   scripts/metrics-cost.sh [ROUNDS] [MESSAGES] [SIZE]
set -eu
rounds=${1:-5} n=${2:-3000} size=${3:-20000}
work=$(mktemp -d)
trap 'kill $off_pid $on_pid 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/mailguard" ./cmd/mailguard
go build -o "$work/milterbench" ./cmd/milterbench
"$work/milterbench" gen -dir "$work/corpus" -count 300 -size "$size" -infect "$(grep -A1 "^WORM_SOBIG.B =" etc/signatures | tail -1)" -infect-every 10 >/dev/null
conf() { # NAME PORT HTTP
	printf 'listen = "inet:127.0.0.1:%s"\nfilters = ["virus"]\nmax_connections = 100\n[log]\nlevel = "warn"\n[http]\nlisten = "%s"\n' "$2" "$3" > "$work/$1.toml"
}
conf off 18897 ""
conf on 18898 "127.0.0.1:18899"
"$work/mailguard" serve --config "$work/off.toml" 2>"$work/off.log" & off_pid=$!
"$work/mailguard" serve --config "$work/on.toml" 2>"$work/on.log" & on_pid=$!
sleep 1
for r in $(seq "$rounds"); do
	for side in off on; do
		if [ $side = off ]; then port=18897 pid=$off_pid; else port=18898 pid=$on_pid; fi
		cpu=$("$work/milterbench" run -milter "inet:127.0.0.1:$port" -corpus "$work/corpus" -c 8 -n "$n" -pid "$pid" | sed -n 's/^milter cpu: .*, \([0-9.]*\) µs per message$/\1/p')
		echo "round $r metrics $side: $cpu µs per message"
	done
done
command -v curl >/dev/null && curl -s http://127.0.0.1:18899/metrics | grep -E "^mailguard_(messages_total|verdicts_total)" || true
