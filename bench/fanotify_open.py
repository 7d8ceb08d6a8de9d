#!/usr/bin/env python3
"""What fanotify groups like the agent's cost a read-only open, without the agent or its eBPF
programs: storms of read-only opens timed with no group; with an exec listener (a
FAN_OPEN_EXEC filesystem mark on /); with that and a second group asking FAN_OPEN with no mark;
with that group's inode marks on 10 files the storm does not open (the sensitive files'
watch). The four alternate in every round; prints the median and the range of the rounds, in
nanoseconds per open.

Usage: sudo python3 bench/fanotify_open.py DIR FILES OPENS ROUNDS
  DIR: a directory on the / filesystem holding files named 1..FILES (created if missing).
"""
import ctypes, os, sys, time, statistics
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_CLASS_NOTIF, FAN_CLOEXEC, FAN_NONBLOCK = 0, 1, 2
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 1, 0x100
FAN_OPEN, FAN_OPEN_EXEC = 0x20, 0x1000
AT_FDCWD = -100
def init():
    fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY)
    if fd < 0: raise OSError(ctypes.get_errno(), "fanotify_init")
    return fd
def mark(fd, flags, mask, path):
    if libc.fanotify_mark(fd, FAN_MARK_ADD | flags, mask, AT_FDCWD, path.encode()) < 0:
        raise OSError(ctypes.get_errno(), "fanotify_mark " + path)
if len(sys.argv) != 5:
    sys.exit(__doc__)
d = sys.argv[1]; files = int(sys.argv[2]); n = int(sys.argv[3]); rounds = int(sys.argv[4])
paths = [os.path.join(d, str(i + 1)) for i in range(files)]
for p in paths:
    if not os.path.exists(p):
        open(p, "w").write("x")
os.makedirs(d + "/sens", exist_ok=True)
sens = []
for i in range(10):
    p = f"{d}/sens/{i}"; open(p, "w").write("x"); sens.append(p)
def storm():
    t = time.perf_counter_ns()
    for i in range(n):
        os.close(os.open(paths[i % files], os.O_RDONLY))
    return (time.perf_counter_ns() - t) / n
modes = ["none", "exec", "exec+open group", "exec+open marks"]
res = {m: [] for m in modes}
for r in range(rounds):
    for m in modes:
        fds = []
        if m != "none":
            fds.append(init()); mark(fds[0], FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC, "/")
        if m.startswith("exec+open"):
            fds.append(init())
            if m == "exec+open marks":
                for p in sens: mark(fds[1], 0, FAN_OPEN, p)
        res[m].append(storm())
        for fd in fds: os.close(fd)
for m in modes:
    v = res[m]
    print(f"{m}: {statistics.median(v):.0f} ns per open (rounds {min(v):.0f}-{max(v):.0f})")
