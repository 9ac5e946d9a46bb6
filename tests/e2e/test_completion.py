"""Shell completion as a user installs it: ``nightcore completion bash`` sourced into a real
bash, whose completion function then calls ``nightcore`` with argcomplete's protocol."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli_subprocess

BASH = shutil.which("bash")


def _complete_in_bash(line: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "nightcore.bash"
    res = run_cli_subprocess("completion", "bash")
    assert res.code == 0, res.err
    script.write_text(res.out)
    words = line.split(" ")
    # bash's own completion machinery, driven the way readline drives it on <TAB>
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}\n"
        "COMP_POINT=${#COMP_LINE}\n"
        "_python_argcomplete nightcore\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bindir = Path(sys.executable).parent  # the venv's `nightcore` console script
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert BASH is not None
    out = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    return [w.strip() for w in out.splitlines() if w.strip()]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_commands_actions_and_options(tmp_path: Path) -> None:
    assert _complete_in_bash("nightcore ru", tmp_path) == ["run", "runs"]
    assert _complete_in_bash("nightcore runs --de", tmp_path) == ["--denied"]
    # an action of a command whose parser a normal start would not build
    assert "checkpoint" in _complete_in_bash("nightcore audit ", tmp_path)
    assert "zsh" in _complete_in_bash("nightcore completion ", tmp_path)


def test_completion_scripts_for_each_shell_and_a_refusal() -> None:
    for shell in ("bash", "zsh", "fish"):
        res = run_cli_subprocess("completion", shell)
        assert res.code == 0 and "nightcore" in res.out, res.err
    bad = run_cli_subprocess("completion", "cmd.exe")
    assert bad.code == 2 and "Traceback" not in bad.err
