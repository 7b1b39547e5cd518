#!/bin/sh
# Submission benchmark against the real daemon: throwaway PostgreSQL, one
# tenant, sendgate-bench scenarios. Options: see bench/run_submission.py --help.
# SENDGATE_BUILD picks another build folder (default ./build).
cd "$(dirname "$0")/.." || exit 2
build=${SENDGATE_BUILD:-build}
if ! make --no-print-directory BUILD="$build" "$build/sendgate" "$build/sendgatectl" \
	"$build/sendgate-bench" >/tmp/sgbench-make.$$ 2>&1; then
	echo "run-submission: make failed (see below); using the binaries already in $build" >&2
	tail -5 /tmp/sgbench-make.$$ >&2
fi
rm -f /tmp/sgbench-make.$$
exec /usr/bin/python3 bench/run_submission.py --build "$build" "$@"
