"""Keeps one benchmark run's clean-up from slowing the next run down.

On ext4 without a journal (this machine's root filesystem), the inode
allocator skips inodes freed in the last 60 seconds (6 minutes while their
inode-table block is still dirty): a crash could otherwise leave a stale
directory entry pointing at a reused inode. Every file created after a big
deletion then walks past the freed inodes one by one (kernel functions
find_inode_bit and recently_deleted), which perf showed as 40 % of the
daemon's loop thread in a run started right after the previous run's 20,000
spool files were removed. A journalled filesystem, where a spool belongs in
production, has no such check.

So the benchmark scripts remove their folders with remove_tree (which syncs,
so the freed inodes' blocks are clean, and leaves a time stamp), and call
wait_settled before a measured run: on a journal-less ext4 it sleeps out
what remains of the minute after the last removal and says so. (A block
the new run dirties again extends its freed neighbours' grace to six
minutes until it is written back; the daemon's syncfs per commit batch
writes it back within milliseconds, so the minute is what counts here.)
Removals not made through remove_tree (PostgreSQL's throwaway cluster, a
few thousand files) are not stamped; their effect is small.
"""

import os
import shutil
import sys
import time

STAMP = "/var/tmp/.sendgate-bench-removed"
SETTLE_S = 65


def _ext4_sysfs(path):
    """/sys/fs/ext4/<device> of the filesystem holding path, or None."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.stat(path)
    try:
        dev = os.path.basename(os.path.realpath(
            "/sys/dev/block/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))))
    except OSError:
        return None
    d = os.path.join("/sys/fs/ext4", dev)
    return d if os.path.isdir(d) else None


def journal_less_ext4(path):
    """True when path is on ext4 mounted without a journal."""
    d = _ext4_sysfs(path)
    if d is None:
        return False
    try:
        with open(os.path.join(d, "journal_task")) as f:
            return f.read().strip() == "<none>"
    except OSError:
        return False


def remove_tree(path):
    """Removes path, writes the freed inodes out, stamps the time."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    try:
        with open(STAMP, "w") as f:
            f.write("%f\n" % time.time())
    except OSError:
        pass


def wait_settled(path, quiet=False):
    """Sleeps until SETTLE_S after the last remove_tree if path is on a
    journal-less ext4; returns the seconds slept."""
    if not journal_less_ext4(path):
        return 0.0
    try:
        left = os.stat(STAMP).st_mtime + SETTLE_S - time.time()
    except OSError:
        return 0.0
    if left <= 0:
        return 0.0
    if not quiet:
        print("waiting %.0f s: %s is ext4 without a journal, and a benchmark folder was "
              "removed %.0f s ago (see bench/settle.py)" % (left, path, SETTLE_S - left),
              file=sys.stderr, flush=True)
    time.sleep(left)
    return left
