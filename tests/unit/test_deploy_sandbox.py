"""The adapter unit's ``MemoryDenyWriteExecute=yes``, for real: the web adapter serves with
writable-executable memory refused by the kernel (``prctl(PR_SET_MDWE)``, Linux 6.3+, which
systemd's setting amounts to: no mapping both writable and executable, none made executable
later). Skipped on an older kernel. The engine does not get the setting: torch's oneDNN
generates CPU kernels at run time (a bf16 matmul failed under MDWE, "could not create a
primitive", on the AVX512-BF16 machine these tests were written on).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.unit.test_systemd_process import ParleyProcess, free_port, parley_env

PR_SET_MDWE = 65
PR_GET_MDWE = 66
MDWE_WRAPPER = [
    sys.executable,
    "-c",
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(f'PR_SET_MDWE failed: errno {ctypes.get_errno()}')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n",
]
"""Runs its arguments with memory-deny-write-execute on (inherited across execve)."""


def mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


@pytest.mark.skipif(not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")
async def test_web_adapter_serves_with_write_execute_memory_denied(
    redis: object, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = parley_env(workdir, redis_url)
    args = ["adapter", "web", "--port", str(port)]
    web = ParleyProcess(args, env, workdir, wrapper=MDWE_WRAPPER)
    try:
        await web.start()
        await web.notified("READY")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/api/config") as response,
        ):
            assert response.status == 200
        web.signal(signal.SIGINT)
        await web.notified("STOPPING")
        assert await web.wait() == 130, web.log()
    finally:
        await web.close()


@pytest.mark.skipif(not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")
def test_the_wrapper_really_denies_write_execute_memory() -> None:
    """The control for the test above: under the same wrapper, a writable and executable
    mapping is refused."""
    probe = (
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    )
    denied = subprocess.run([*MDWE_WRAPPER, sys.executable, "-c", probe], capture_output=True)
    assert denied.returncode != 0
    assert b"PermissionError" in denied.stderr
    allowed = subprocess.run([sys.executable, "-c", probe], capture_output=True)
    assert allowed.returncode == 0, allowed.stderr
