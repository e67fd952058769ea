"""Run every benchmark, one after the other, write benchmarks/results.json and print all tables (markdown, as
docs/benchmarks.md shows them).

    python benchmarks/run_all.py [--quick] [--threads N|default]

`--quick` is a smoke run with fewer repetitions (results go to benchmarks/results-quick.json instead). The
full run takes about 12 minutes on 2 cores (more on a busy machine); the fingerprint benchmark needs ~1.2 GiB
free in the temporary folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from common import cli, report, runner

BENCHMARKS = ("import", "suite", "reruns", "margins", "memory", "scale", "fingerprint", "factors",
              "realsize")
HERE = Path(__file__).resolve().parent


def main() -> None:
    args = cli.arguments(__doc__.splitlines()[0])
    path = report.results_path(args.quick)
    path.unlink(missing_ok=True)  # a benchmark that fails must not leave an older section behind
    flags = (["--quick"] if args.quick else []) + ["--threads", args.threads]
    started, load_before = time.perf_counter(), runner.load_average()
    failed = []
    for name in BENCHMARKS:
        runner.log(f"== bench_{name}.py {' '.join(flags)}")
        result = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py"), *flags], stdout=subprocess.DEVNULL)
        if result.returncode != 0:
            failed.append(name)
            runner.log(f"bench_{name}.py failed with exit status {result.returncode}")
    data = report.read_json(path)
    data["machine"] = report.machine_info()
    data["run"] = {"seconds": round(time.perf_counter() - started, 1), "load_before": list(load_before),
                   "load_after": list(runner.load_average()), "quick": args.quick, "failed": failed,
                   "torch_threads": runner.TORCH_THREADS or "default"}
    sections = data.get("benchmarks", {})
    data["benchmarks"] = {name: sections[name] for name in BENCHMARKS if name in sections}
    report.write_json(path, data)
    print(f"Machine: {report.machine_line(data['machine'])}\n")
    for section in data["benchmarks"].values():
        print(report.render_section(section) + "\n")
    print(f"Results: {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)} (see the messages above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
