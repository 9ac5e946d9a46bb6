"""Install (as root) or name (otherwise) the Debian packages the test suite needs.

The list is empty until a test needs a system component (nats-server for the mesh,
chromium for the dashboard); each entry names the executable that proves it is present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Debian package -> executable the tests use.
PACKAGES: dict[str, str] = {
    "chromium": "chromium",  # dashboard browser tests (driven by playwright, executable_path)
    "nats-server": "nats-server",  # Night Mesh tests: real JetStream servers on loopback ports
}


def main() -> int:
    missing = [pkg for pkg, exe in PACKAGES.items() if shutil.which(exe) is None]
    if not missing:
        return 0
    if os.geteuid() != 0:
        sys.stderr.write(
            "missing system packages; run:\n  sudo apt-get update && "
            f"sudo apt-get install -y {' '.join(missing)}\n"
        )
        return 1
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
