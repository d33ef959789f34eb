"""The LiveKit server we start is reachable from this machine only."""

import shutil
import subprocess


def test_livekit_server_listens_on_loopback_only(livekit_server):
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is needed to list listening sockets"
    pid = str(livekit_server._proc.pid)
    lines = [line for line in subprocess.run([ss, "-lntupH"], capture_output=True, text=True, check=True).stdout.splitlines()
             if f"pid={pid}," in line]
    local = [line.split()[4] for line in lines]
    assert local, "the server has no listening sockets?"
    assert all(addr.startswith("127.0.0.1:") for addr in local), local
    assert f"127.0.0.1:{livekit_server.port}" in local
