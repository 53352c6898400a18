"""Run stt-agent as a container's main process and answer Kubernetes probes from its sd_notify messages.

The agent reports its health the way systemd asks (agent/service/notify.py): READY=1 once the model
is warm and the audio source is open, WATCHDOG=1 only while the pipeline consumes audio and no decode
is stuck, STATUS= lines ("stalled: ..." when it withholds pings), STOPPING=1 while draining. In a
container no service manager listens, so this script plays that part: it binds the notification
socket, starts the agent with NOTIFY_SOCKET and WATCHDOG_USEC set, records what arrives in a small
state file, forwards SIGTERM/SIGINT/SIGHUP, and exits with the agent's exit code. The probes run
`supervise.py check ...` in the same container and read that file.

    supervise.py run [--dir /run/stt-agent] [--watchdog-sec 30] -- stt-agent run --config FILE
    supervise.py check ready|live [--dir /run/stt-agent] [--watchdog-sec 30]

check live:  exit 0 while a WATCHDOG=1 ping came within --watchdog-sec (systemd's WatchdogSec=);
             the agent pings unconditionally while it starts and while it drains, so only a stalled
             pipeline or a hung process fails it. WATCHDOG=trigger fails it at once.
check ready: exit 0 once READY=1 came, unless the last STATUS says "stalled", or it is stopping or
             reloading.
Both print one line saying why. Exit 1: unhealthy or not ready; 2: usage; 3: no state to read.
Only the standard library (Python >= 3.10): it runs with the image's own interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

SOCKET_NAME = "notify.sock"
STATE_NAME = "state.json"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def fresh_state(now: float) -> dict:
    # Times are CLOCK_MONOTONIC seconds: one clock for every process on the node, and unlike the wall
    # clock it does not jump when an edge box without an RTC syncs NTP after boot.
    return {"started": now, "pid": None, "ready": False, "ready_at": None, "stopping": False,
            "reloading": False, "status": None, "last_ping": None, "pings": 0, "trigger": False,
            "exited": None}


def apply_message(state: dict, datagram: bytes, now: float) -> None:
    """Fold one sd_notify datagram (KEY=value lines) into `state`."""
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        if key == "READY" and value == "1":
            state.update(ready=True, reloading=False, ready_at=now)
        elif key == "RELOADING" and value == "1":
            state["reloading"] = True
        elif key == "STOPPING" and value == "1":
            state["stopping"] = True
        elif key == "STATUS":
            state["status"] = value
        elif key == "WATCHDOG" and value == "1":
            state["last_ping"] = now
            state["pings"] += 1
        elif key == "WATCHDOG" and value == "trigger":
            state["trigger"] = True


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # a probe never reads a half-written file


def run(args) -> int:
    if not args.command:
        print("supervise.py run: give the command after --", file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)
    sock_path = os.path.join(args.dir, SOCKET_NAME)
    state_path = os.path.join(args.dir, STATE_NAME)
    # The directory outlives a container restart (an emptyDir belongs to the pod): start from nothing,
    # so a READY=1 of the previous agent never makes a starting one look ready.
    for stale in (sock_path, state_path):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(sock_path)
    state = fresh_state(time.monotonic())
    write_state(state_path, state)

    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(int(args.watchdog_sec * 1_000_000)))
    env.pop("WATCHDOG_PID", None)
    # Handlers first: PID 1 ignores a signal it has no handler for, and a SIGTERM that came before the
    # agent existed is passed on as soon as it does.
    child = None
    early = []

    def forward(signum, _frame):
        if child is None:
            early.append(signum)
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    child = subprocess.Popen(args.command, env=env)
    for signum in early:
        child.send_signal(signum)
    state["pid"] = child.pid
    write_state(state_path, state)

    while True:
        try:
            readable, _, _ = select.select([sock], [], [], 1.0)
        except InterruptedError:
            readable = []
        changed = False
        while readable:
            try:
                datagram = sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            apply_message(state, datagram, time.monotonic())
            changed = True
        code = child.poll()
        if code is not None:
            state["exited"] = code
            write_state(state_path, state)
            sock.close()
            return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it
        if changed:
            write_state(state_path, state)


def check(args) -> int:
    state_path = os.path.join(args.dir, STATE_NAME)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"unknown: cannot read {state_path} ({exc}); is supervise.py run the container's command?")
        return 3
    now = time.monotonic()
    status = state.get("status")
    said = f" (status: {status})" if status else ""
    if state.get("exited") is not None:
        print(f"unhealthy: the agent exited with {state['exited']}")
        return 1
    if args.what == "live":
        if state.get("trigger"):
            print(f"unhealthy: the agent asked for a restart (WATCHDOG=trigger){said}")
            return 1
        last = state.get("last_ping")
        age = now - (last if last is not None else state["started"])
        if age > args.watchdog_sec:
            what = "no watchdog ping yet" if last is None else "no watchdog ping"
            print(f"unhealthy: {what} for {age:.0f} s (limit {args.watchdog_sec:g} s){said}")
            return 1
        print(f"alive: last watchdog ping {age:.1f} s ago, {state.get('pings', 0)} in all{said}")
        return 0
    if state.get("stopping"):
        print(f"not ready: stopping (draining pending finals){said}")
        return 1
    if not state.get("ready"):
        print(f"not ready: starting for {now - state['started']:.0f} s (model load, warm-up, audio source){said}")
        return 1
    if state.get("reloading"):
        print(f"not ready: reloading the configuration{said}")
        return 1
    if status and status.startswith("stalled"):
        print(f"not ready: {status}")
        return 1
    print(f"ready{said}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="supervise.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("run", "check"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default="/run/stt-agent", help="socket and state directory (an emptyDir)")
        # 30 s: the systemd unit's WatchdogSec=, for the same reasons (the agent pings every half of it).
        p.add_argument("--watchdog-sec", type=float, default=30.0, help="longest gap between WATCHDOG=1 pings")
        if name == "run":
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the agent's command line")
        else:
            p.add_argument("what", choices=("ready", "live"))
    args = parser.parse_args(argv)
    if args.mode == "run":
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
        return run(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
