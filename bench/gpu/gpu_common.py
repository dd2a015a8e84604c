"""What the device script's parts share: a part's result, a finished command, the context."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Result:
    name: str
    status: str = "pass"          # pass, fail, timeout, skip, unavailable
    seconds: float = 0.0
    summary: str = ""
    details: Dict[str, object] = field(default_factory=dict)
    log: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "timeout")


@dataclass
class Context:
    stage: str
    dry: bool
    out: str
    work: str                      # logs and raw outputs before they are packed
    deadline: float
    python: str = sys.executable
    results: List[Result] = field(default_factory=list)
    facts: Dict[str, object] = field(default_factory=dict)

    def env(self, **extra: str) -> Dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
        env.setdefault("TRITON_INTERPRET", "1" if self.dry else "0")
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: List[str], timeout_s: float,
            env: Optional[Dict[str, str]] = None) -> "Finished":
        """Runs ``command`` from the repository root, its output to ``<name>.log``, killed
        (its whole process group) after ``timeout_s`` or when the stage's budget ends."""
        limit = max(1.0, min(timeout_s, self.remaining() - 10))
        log = os.path.join(self.work, f"{name}.log")
        started = time.monotonic()
        with open(log, "w") as f:
            f.write(f"$ {' '.join(shlex.quote(c) for c in command)}\n(timeout {limit:.0f} s)\n")
            f.flush()
            process = subprocess.Popen(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                       env=env or self.env(), start_new_session=True)
            try:
                returncode = process.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        process.wait(timeout=10)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                returncode = process.returncode
                f.write(f"\n[driver] TIMEOUT after {limit:.0f} s: killed\n")
        with open(log, errors="replace") as f:
            text = f.read()
        return Finished(returncode, timed_out, time.monotonic() - started, log, text, limit)


@dataclass
class Finished:
    returncode: Optional[int]
    timed_out: bool
    seconds: float
    log: str
    text: str
    limit: float

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text.rstrip().splitlines()[-lines:])
