"""Run every benchmarks/bench_*.py in turn (``make bench``); each prints its own figures."""
import glob
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
failed = []
for path in sorted(glob.glob(os.path.join(here, 'bench_*.py'))):
    print(f'==> {os.path.basename(path)}', flush=True)
    if subprocess.call([sys.executable, path] + sys.argv[1:]) != 0:
        failed.append(os.path.basename(path))
if failed:
    sys.exit(f'failed: {", ".join(failed)}')
