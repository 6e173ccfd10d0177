#!/usr/bin/env python3
"""Run a command and report its wall time and peak memory.

    python3 bench/measure.py CMD [ARGS...]

CMD's own output passes through unchanged. When it has exited, one line is
printed on stdout:

    measure: wall_s=12.345 maxrss_mb=67.8 exit=0 cpu_s=20.1

This replaces GNU `/usr/bin/time -f '%e %M'`, which is not installed
everywhere. maxrss_mb (MiB) is ru_maxrss from wait4() on CMD: the peak
resident set of CMD or of the largest descendant it waited for. Linux folds
the spawning process's own peak into that number (exec records the old
address space's high-water mark), so a CMD smaller than this Python process
would read as this process's size; in that case the peak sampled from
/proc/PID/status (VmHWM, every 10 ms) is reported instead. Wall time is
exact: the exit is seen through a pidfd.
cpu_s is CMD's user + system CPU time (from the same wait4()).
The exit status is CMD's (128+N if it was killed by signal N).
"""
import os
import resource
import select
import sys
import time


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main():
    argv = sys.argv[1:]
    if not argv:
        sys.exit("usage: measure.py CMD [ARGS...]")
    sys.stdout.flush()
    floor_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ)
    except OSError as e:
        sys.exit(f"measure.py: cannot run {argv[0]}: {e}")
    sampled_kb = 0
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # old kernel or Python: plain blocking wait
        pidfd = None
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(10):
            sampled_kb = max(sampled_kb, vm_hwm_kb(pid))
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    peak_kb = usage.ru_maxrss
    if peak_kb <= floor_kb and sampled_kb:
        peak_kb = sampled_kb
    cpu = usage.ru_utime + usage.ru_stime
    print(f"measure: wall_s={wall:.3f} maxrss_mb={peak_kb / 1024:.1f} exit={code} cpu_s={cpu:.2f}",
          flush=True)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
