#!/bin/sh
# Submission benchmark against the real daemon: throwaway PostgreSQL, one
# tenant, sendgate-bench scenarios. Options: see bench/run_submission.py --help.
# SENDGATE_BUILD=DIR uses the binaries already built there (e.g. build/asan,
# made with its own flags) and builds nothing; otherwise ./build is brought
# up to date first.
cd "$(dirname "$0")/.." || exit 2
if [ -n "$SENDGATE_BUILD" ]; then
	build=$SENDGATE_BUILD
elif ! make --no-print-directory build/sendgate build/sendgatectl build/sendgate-bench \
	>/tmp/sgbench-make.$$ 2>&1; then
	build=build
	echo "run-submission: make failed (below); using the binaries already in build/" >&2
	tail -5 /tmp/sgbench-make.$$ >&2
else
	build=build
fi
rm -f /tmp/sgbench-make.$$
exec /usr/bin/python3 bench/run_submission.py --build "$build" "$@"
