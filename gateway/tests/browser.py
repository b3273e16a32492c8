"""Runs headless Chromium on a page for the gateway's TLS test, and ends it and every process
it started: the browser's helpers (zygotes, renderers, crash handlers that detach themselves)
are reparented to this process, a child subreaper, and reaped here, never left to init.

    python3 browser.py SPKI_HASH PROFILE_DIR URL LIMIT_SECS

Runs `chromium --headless` on URL trusting the certificate whose key has SPKI_HASH
(base64 SHA-256, --ignore-certificate-errors-spki-list) until stdin closes or LIMIT_SECS pass,
then SIGTERMs the browser's process group (SIGKILL after 10 s) and any other process left
under this one, and waits for all of them.
"""
import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def children():
    """PIDs whose parent is this process."""
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append(int(pid))
    return out


def reap(deadline):
    """Waits for every child until none is left or the deadline passes; True if none is left."""
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            time.sleep(0.05)
    return False


def main(spki, profile, url, limit):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    browser = subprocess.Popen(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-crash-reporter", "--disable-breakpad",
            f"--user-data-dir={profile}",
            f"--ignore-certificate-errors-spki-list={spki}",
            url,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    print(f"started {browser.pid}", flush=True)
    select.select([sys.stdin], [], [], float(limit))
    for sig, grace in [(signal.SIGTERM, 10), (signal.SIGKILL, 10)]:
        for target in [-browser.pid] + children():
            try:
                os.kill(target, sig) if target > 0 else os.killpg(-target, sig)
            except OSError:
                pass
        if reap(time.monotonic() + grace):
            return
    sys.exit("processes left after SIGKILL: %s" % children())


if __name__ == "__main__":
    main(*sys.argv[1:5])
