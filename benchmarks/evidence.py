"""Evidence costs, measured in one run of this script.

- attestation: statement build + DSSE signing per run, beside the run itself (sandbox only)
- proof bundle export and offline verify for 1,000 runs

    .venv/bin/python benchmarks/evidence.py [--runs N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from nightcore.app.evidence import export_proof
from nightcore.evidence.attestation import RunFacts, build_statement, sign_attestation
from nightcore.evidence.bundle import verify_bundle
from nightcore.runner.pipeline import Runner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_ws


def main() -> None:
    n = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1000
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_ws(Path(tmp), {"hello": "hello"})
        runner = Runner(ws)
        try:
            runner.run(["hello"])
            signer = runner.node_signer()
            sandbox = runner.sandbox()
            from nightcore.sandbox.types import EffectiveLimits, RunConfig

            module = (ws.layout.modules_dir / "hello/module.wasm").read_bytes()
            import hashlib

            cfg = RunConfig(
                tenant="hello",
                module_sha256=hashlib.sha256(module).hexdigest(),
                entrypoint="_start",
                argv=("hello",),
                env=(),
                preopens=(),
                limits=EffectiveLimits(10**8, 2000, 1 << 24, 1 << 19, 1 << 16),
            )
            run_t, att_t = [], []
            for _ in range(300):
                t0 = time.perf_counter()
                sandbox.run(module, cfg)
                run_t.append(time.perf_counter() - t0)
                facts = RunFacts(
                    "hello",
                    "r",
                    cfg.module_sha256,
                    "e" * 64,
                    "k" * 64,
                    cfg.limits.to_dict(),
                    {},
                    ["hello"],
                    "OK",
                    0,
                    "",
                    42,
                    100,
                    65536,
                    22,
                    "a" * 64,
                    "b" * 64,
                    7,
                    False,
                    0,
                    "n" * 64,
                    "node",
                    [],
                    False,
                )
                t0 = time.perf_counter()
                sign_attestation(build_statement(facts), signer)
                att_t.append(time.perf_counter() - t0)
            r, a = statistics.median(run_t), statistics.median(att_t)
            print(
                f"attestation: {a * 1e3:.3f} ms per run (build + sign) vs the sandbox run "
                f"{r * 1e3:.3f} ms = {a / r:.2f}x of the run itself"
            )
            t0 = time.perf_counter()
            done = 0
            while done < n:
                batch = min(50, n - done)
                for _ in range(batch):
                    runner.run(["hello"])
                done += batch
            print(f"{n} recorded runs in {time.perf_counter() - t0:.1f} s")
        finally:
            runner.close()
        out = Path(tmp) / "proof.tar.gz"
        t0 = time.perf_counter()
        _digest, runs = export_proof(ws, out)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = verify_bundle(out, ws.layout.node_pub_path.read_bytes())
        verify_s = time.perf_counter() - t0
        assert res.ok, res.to_dict()
        print(
            f"proof bundle for {runs} runs: export {export_s:.2f} s, verify {verify_s:.2f} s, "
            f"{out.stat().st_size / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
