"""The core stays pure: importing it pulls in no streaming, Redis or metrics library."""

from __future__ import annotations

import subprocess
import sys


def test_import_fatigue_imports_no_infrastructure():
    code = (
        "import sys, fatigue, fatigue.replay, fatigue.cli, fatigue.testing\n"
        "bad = [m for m in ('faust', 'aiokafka', 'kafka', 'redis', 'prometheus_client', 'mode', 'asyncio')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
