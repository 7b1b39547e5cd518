#!/bin/sh
# sendgate container entrypoint (POSIX sh).
#
#   entrypoint.sh [sendgate [ARGS...]]   wait for the database, apply the
#                                        migrations, exec the daemon
#   entrypoint.sh sendgatectl ARGS...    run the admin CLI with the same config
#   entrypoint.sh reload                 rewrite the effective config, then
#                                        SIGHUP the daemon (PID 1 in a container)
#   entrypoint.sh COMMAND...             exec anything else (a shell, say)
#
# Environment (defaults are the image's paths; the tests point them at a
# build tree and a throwaway database):
#   SENDGATE_CONFIG      configuration file        (/etc/sendgate/sendgate.conf)
#   SENDGATE_BIN         the daemon                (/usr/local/bin/sendgate)
#   SENDGATECTL_BIN      the admin CLI             (/usr/local/bin/sendgatectl)
#   SENDGATE_DB_WAIT     seconds to wait for the database before giving up (60)
#   SENDGATE_MIGRATE     yes: run 'sendgatectl migrate' before starting (yes)
#   SENDGATE_RUN_DIR     where the effective config is written when overrides
#                        are given                 (/run/sendgate)
#   SENDGATE_DATABASE_URL   read by sendgate itself: overrides [database] url
#   SENDGATE_DATABASE_PASSWORD_FILE   file holding the database password
#                        (a Docker secret); exported as libpq's PGPASSWORD
#   SENDGATE_RELOAD_PID  process that 'reload' signals (1)
#   SENDGATE__<section>__<key>=VALUE   overrides one config key, e.g.
#                        SENDGATE__smtp__submission_listen=0.0.0.0:587
#
# Overrides go into a copy of the config file: the key's own line, if any, is
# commented out and a [section] key = value line is appended, so the
# environment wins and the line numbers of the operator's file stay the same
# in error messages.
# The daemon rereads that copy on SIGHUP: after editing the mounted file, use
# 'docker compose exec sendgate sendgate-entrypoint reload' (or restart).
# The daemon is exec'd, so it is PID 1 of the container and gets SIGTERM and
# SIGHUP directly.
set -eu

SENDGATE_CONFIG=${SENDGATE_CONFIG:-/etc/sendgate/sendgate.conf}
SENDGATE_BIN=${SENDGATE_BIN:-/usr/local/bin/sendgate}
SENDGATECTL_BIN=${SENDGATECTL_BIN:-/usr/local/bin/sendgatectl}
SENDGATE_DB_WAIT=${SENDGATE_DB_WAIT:-60}
SENDGATE_MIGRATE=${SENDGATE_MIGRATE:-yes}
SENDGATE_RUN_DIR=${SENDGATE_RUN_DIR:-/run/sendgate}

# One key=value log line on stderr, in the daemon's format.
log() {
	level=$1
	shift
	printf 'ts=%s prog=sendgate-entrypoint level=%s %s\n' \
		"$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$level" "$*" >&2
}

die() {
	log err "$@"
	exit 1
}

# Text made safe for a quoted log value: one line, no double quotes.
quote() {
	printf '%s' "$1" | tr '\n"' " '"
}

case $SENDGATE_DB_WAIT in
'' | *[!0-9]*) die "event=bad_environment error=\"SENDGATE_DB_WAIT must be a number of seconds, not '$(quote "$SENDGATE_DB_WAIT")'\"" ;;
esac

if [ -n "${SENDGATE_DATABASE_PASSWORD_FILE:-}" ]; then
	[ -r "$SENDGATE_DATABASE_PASSWORD_FILE" ] ||
		die "event=bad_environment error=\"SENDGATE_DATABASE_PASSWORD_FILE $SENDGATE_DATABASE_PASSWORD_FILE is not readable\""
	PGPASSWORD=$(cat "$SENDGATE_DATABASE_PASSWORD_FILE")
	export PGPASSWORD
fi

[ -r "$SENDGATE_CONFIG" ] ||
	die "event=config_missing config=$SENDGATE_CONFIG error=\"cannot read the configuration file (mount one there or set SENDGATE_CONFIG)\""

# Writes the effective config (the file plus SENDGATE__section__key
# overrides) and prints its path; prints the file's own path when there are
# no overrides.
effective_config() {
	names=$(env | sed -n 's/^\(SENDGATE__[A-Za-z0-9_]*\)=.*/\1/p' | sort -u)
	if [ -z "$names" ]; then
		printf '%s\n' "$SENDGATE_CONFIG"
		return 0
	fi
	nl='
'
	for name in $names; do
		rest=${name#SENDGATE__}
		section=${rest%%__*}
		key=${rest#*__}
		case $section/$key in
		*[!a-z0-9_/]* | /* | */ | "$rest"/*)
			die "event=bad_environment variable=$name error=\"expected SENDGATE__<section>__<key> in lower case\"" ;;
		esac
		value=
		eval "value=\${$name}"
		case $value in
		*"$nl"*) die "event=bad_environment variable=$name error=\"value contains a newline\"" ;;
		esac
	done
	mkdir -p "$SENDGATE_RUN_DIR" || die "event=config_write_failed path=$SENDGATE_RUN_DIR"
	out="$SENDGATE_RUN_DIR/sendgate.conf"
	tmp="$out.tmp.$$"
	keys=
	for name in $names; do
		rest=${name#SENDGATE__}
		keys="$keys ${rest%%__*}.${rest#*__}"
	done
	# cp -p: the copy has the file's owner and mode, so whoever may read
	# the operator's file (the daemon after it drops root) may read it.
	# A key set in the file and in the environment is commented out in the
	# copy (a key may be set only once), which keeps every line number.
	if ! cp -p "$SENDGATE_CONFIG" "$tmp" ||
		! awk -v keys="$keys" '
			BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) ov[k[i]] = 1 }
			/^[ \t]*\[/ {
				s = $0; sub(/^[ \t]*\[[ \t]*/, "", s); sub(/[ \t]*\].*$/, "", s); sect = s
			}
			/^[ \t]*[A-Za-z0-9_.-]+[ \t]*[=:]/ {
				key = $0; sub(/^[ \t]*/, "", key); sub(/[ \t]*[=:].*$/, "", key)
				if ((sect "." key) in ov) { print "; (set by the environment, see the end) " $0; next }
			}
			{ print }' "$SENDGATE_CONFIG" >"$tmp" || ! {
		printf '\n; ---- overrides from the environment (docker/entrypoint.sh)\n'
		for name in $names; do
			rest=${name#SENDGATE__}
			eval "value=\${$name}"
			printf '[%s]\n; from %s\n%s = %s\n' "${rest%%__*}" "$name" "${rest#*__}" "$value"
		done
	} >>"$tmp" || ! mv "$tmp" "$out"; then
		rm -f "$tmp"
		die "event=config_write_failed path=$out"
	fi
	printf '%s\n' "$out"
}

# Applies the migrations, waiting up to SENDGATE_DB_WAIT seconds for the
# database to accept connections. Any other failure (a bad config, a failing
# migration, a refused password) stops at once: waiting would not fix it.
migrate() {
	conf=$1
	start=$(date +%s)
	attempt=0
	while :; do
		attempt=$((attempt + 1))
		if out=$(PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5} \
			"$SENDGATECTL_BIN" -c "$conf" migrate 2>&1); then
			log info "event=migrated attempt=$attempt result=\"$(quote "$out")\""
			return 0
		fi
		case $out in
		*"authentication failed"*)
			die "event=migrate_failed error=\"$(quote "$out")\"" ;;
		*"cannot connect to the database"*) ;;
		*)
			die "event=migrate_failed error=\"$(quote "$out")\"" ;;
		esac
		waited=$(($(date +%s) - start))
		if [ "$waited" -gt "$SENDGATE_DB_WAIT" ]; then
			die "event=database_unreachable waited=${waited}s attempts=$attempt error=\"$(quote "$out")\" hint=\"check SENDGATE_DATABASE_URL or [database] url; SENDGATE_DB_WAIT sets the wait\""
		fi
		log info "event=waiting_for_database attempt=$attempt waited=${waited}s error=\"$(quote "$out")\""
		sleep 1
	done
}

cmd=${1:-sendgate}
[ $# -gt 0 ] && shift

case $cmd in
sendgate)
	conf=$(effective_config)
	case $SENDGATE_MIGRATE in
	yes | true | 1) migrate "$conf" ;;
	no | false | 0) log info "event=migrate_skipped reason=SENDGATE_MIGRATE" ;;
	*) die "event=bad_environment error=\"SENDGATE_MIGRATE must be yes or no\"" ;;
	esac
	log info "event=exec program=$SENDGATE_BIN config=$conf"
	exec "$SENDGATE_BIN" -c "$conf" "$@"
	;;
sendgatectl)
	conf=$(effective_config)
	exec "$SENDGATECTL_BIN" -c "$conf" "$@"
	;;
reload)
	conf=$(effective_config)
	pid=${SENDGATE_RELOAD_PID:-1}
	kill -HUP "$pid" || die "event=reload_failed pid=$pid"
	log info "event=reload_requested pid=$pid config=$conf"
	;;
*)
	exec "$cmd" "$@"
	;;
esac
