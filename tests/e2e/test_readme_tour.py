"""The README's "A tour" runs as written, in an empty directory, with only ``nightcore``.

The fenced ``sh`` block under ``## A tour`` is run as one bash script (``set -euo pipefail``,
so any failing line fails the test and ``cd`` carries over) in a temporary directory, with the
venv's ``bin`` first on ``PATH`` and ``NIGHTCORE_KEY_PASSPHRASE`` set. Nothing else is changed,
except:

- placeholders (``PLACEHOLDERS``), replaced by a shell expression computing the value at that
  point of the script: ``<RUN_ID>`` is the newest run of ``hello`` and ``<KEYID>`` the key id of
  the trusted publisher key named ``alice``;
- lines that cannot run in a test (``SKIP``, with the reason);
- after a line that starts a background node, a wait until ``nightcore node status`` answers
  (``WAIT_AFTER``): the tour's next line asks that node for its status.

A line that is expected to exit non-zero is written in the tour so that it succeeds
(``... || echo ...``); there is no allow-list of failures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
TIMEOUT_S = 600

_PY = f"{BIN / 'python'} -c"
PLACEHOLDERS: dict[str, str] = {
    "<RUN_ID>": (
        '"$(nightcore runs --tenant hello --limit 1 --json | '
        f'{_PY} \'import json, sys; print(json.load(sys.stdin)[0]["run_id"])\')"'
    ),
    "<KEYID>": (
        '"$(nightcore trust list --json | '
        f'{_PY} \'import json, sys; print(next(k["key_id"] for k in json.load(sys.stdin) '
        'if k["name"] == "alice"))\')"'
    ),
}

SKIP: dict[str, str] = {
    "nightcore serve": "a server that blocks in the foreground (tests/e2e/test_dashboard_cli.py)",
}

WAIT_AFTER: dict[str, str] = {
    "nightcore node &": (
        "for _ in $(seq 300); do nightcore node status >/dev/null 2>&1 && break; sleep 0.1; done"
    ),
}


def _strongbox_unavailable() -> str:
    from nightcore.sandbox.strongbox import seccomp_available

    why = seccomp_available()
    if why:
        return why
    return "" if os.geteuid() == 0 else "strongbox workers need root"


def tour_lines(text: str) -> list[str]:
    """The lines of the first ``sh`` block after ``## A tour``."""
    after = text.split("\n## A tour\n", 1)[1]
    m = re.search(r"^```sh\n(.*?)^```$", after, re.S | re.M)
    assert m, "README.md: no ```sh block under ## A tour"
    return m.group(1).splitlines()


def command_of(line: str) -> str:
    """The command of a tour line, without its trailing comment."""
    return re.sub(r"\s+#.*$", "", line).strip() if not line.lstrip().startswith("#") else ""


def tour_script(lines: list[str], skip: dict[str, str]) -> str:
    out = [
        "set -euo pipefail",
        # a failing line must not leave the background node running
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
    ]
    for line in lines:
        cmd = command_of(line)
        if not cmd:
            continue
        if cmd in skip:
            out.append(f"# skipped ({skip[cmd]}): {cmd}")
            continue
        for token, value in PLACEHOLDERS.items():
            cmd = cmd.replace(token, value)
        assert not re.search(r"<[A-Z_]+>", cmd), f"an unfilled placeholder in: {line}"
        out.append(f"echo '+ {cmd.replace(chr(39), '')}' >&2")
        out.append(cmd)
        if cmd in WAIT_AFTER:
            out.append(WAIT_AFTER[cmd])
    return "\n".join(out) + "\n"


def test_the_tour_block_is_found_and_every_placeholder_is_filled() -> None:
    lines = tour_lines(README.read_text(encoding="utf-8"))
    commands = [command_of(ln) for ln in lines if command_of(ln)]
    assert commands[0].startswith("export NIGHTCORE_KEY_PASSPHRASE=")
    assert "nightcore new hello --dir ws/modules/hello" in commands
    assert all(c in commands for c in SKIP), "SKIP names a line the tour no longer has"
    assert all(c in commands for c in WAIT_AFTER), "WAIT_AFTER names a line no longer there"
    for c in commands:  # only the installed nightcore: nothing from a clone of the repository
        assert "tools/" not in c and "examples/" not in c and ".venv" not in c, c
    script = tour_script(lines, {})
    assert not re.search(r"<[A-Z_]+>", script)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    skip = dict(SKIP)
    why = _strongbox_unavailable()
    if why:
        skip["nightcore run --strongbox"] = f"strongbox unavailable here: {why}"
    script = tour_script(tour_lines(README.read_text(encoding="utf-8")), skip)
    home = tmp_path / "tour"
    home.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("NIGHTCORE_") and k != "VIRTUAL_ENV"
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NIGHTCORE_KEY_PASSPHRASE"] = "a long passphrase"
    env["HOME"] = str(tmp_path)
    env["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"the tour failed (exit {proc.returncode})\n--- stderr (tail)\n{proc.stderr[-4000:]}"
        f"\n--- stdout (tail)\n{proc.stdout[-2000:]}"
    )
    ws = home / "ws"
    assert (ws / "modules" / "hello" / "module.wasm").is_file()
    assert (ws / "hello-incident.tar.gz").is_file()
    assert (ws / "proof.tar.gz").is_file()
    assert (home / "repo").is_dir()
    assert "denied, as it should be" in proc.stdout
