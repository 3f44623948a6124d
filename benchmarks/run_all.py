"""``make bench``: every pipeline against its plain baseline, and ONE table of the results.

    python benchmarks/run_all.py [--quick] [--repeat R] [--only PIPELINE ...] [--no_streaming]
    python benchmarks/run_all.py --render

Runs the benchmark of every pipeline of PIPELINES (a whole process on each side at n
and 4n, the best of R runs; each script prints its own lines), gathers their results
(``--json``) into benchmarks/results.json, prints one table, and rewrites the marked
block of README.md and docs/benchmarks.md from it (benchmarks/_table.py). Then, unless
``--quick`` or ``--no_streaming``, the streaming benchmarks run with their own printout
(they are not in the table: they have no plain baseline).

A benchmark that fails, or whose results disagree with its baseline, gets a FAILED row
(never its last figures) and the run ends with exit 1 and one line naming it.

``--quick``: small sizes and one run per side (minutes), for development; its rows are
marked quick. ``--only NAME`` (repeatable) runs those pipelines and keeps the other rows
of the results file. ``--render`` runs nothing: it re-renders the blocks from the
results file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _table  # noqa: E402

#: (pipeline, script, its extra flags, sizes of the full run, sizes of --quick); the full
#: sizes are the scripts' defaults and issue 21's reference
PIPELINES = (
    ('norms', 'bench_norms.py', (), (2_000_000, 8_000_000), (250_000, 1_000_000)),
    ('assign', 'bench_assign.py', (), (2_000_000, 8_000_000), (250_000, 1_000_000)),
    ('evaluate ranking', 'bench_evaluate.py', ('--task', 'ranking'), (5_000_000, 20_000_000),
     (500_000, 2_000_000)),
    ('evaluate classification', 'bench_evaluate.py', ('--task', 'classification'),
     (5_000_000, 20_000_000), (500_000, 2_000_000)),
    ('kmeans', 'bench_kmeans.py', (), (1_000_000, 4_000_000), (100_000, 400_000)),
    ('monitor', 'bench_monitor.py', (), (1_000_000, 4_000_000), (100_000, 400_000)),
    ('pca', 'bench_pca.py', (), (1_000_000, 4_000_000), (100_000, 400_000)),
)
FULL_REPEAT, QUICK_REPEAT = 3, 1
#: run after the table in a full run, each with its own printout
STREAMING = ('bench_streaming.py', 'bench_watch.py')


def command(spec, quick: bool, repeat: int, json_path: str) -> list[str]:
    _, script, extra, full, small = spec
    sizes = small if quick else full
    return ([sys.executable, os.path.join(HERE, script), *extra]
            + [a for n in sizes for a in ('--rows', str(n))]
            + ['--repeat', str(repeat), '--json', json_path])


def run_one(spec, quick: bool, repeat: int, workdir: str) -> dict:
    """Run one pipeline's benchmark; its result, or a failed row that says why."""
    name, script = spec[0], os.path.basename(spec[1])
    json_path = os.path.join(workdir, name.replace(' ', '-') + '.json')
    if os.path.exists(json_path):
        os.remove(json_path)  # never a stale result
    cmd = command(spec, quick, repeat, json_path)
    print(f'==> {name}: python benchmarks/{script} ' + ' '.join(cmd[2:-2]), flush=True)
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    row = _table.load_results(json_path) if os.path.exists(json_path) else None
    mode = {'mode': 'quick' if quick else 'full'}
    if row is not None and row.get('agreed') is False:
        return {**row, **mode, 'status': 'failed',
                'reason': f'the results disagree ({row.get("agreement", "?")})'}
    if proc.returncode != 0 or row is None:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = f'{script} exited {proc.returncode}' + (f': {last[-1][:200]}' if last else '')
        if proc.returncode == 0:
            why = f'{script} wrote no result'
        return {'pipeline': name, 'status': 'failed', 'reason': why, **mode,
                'date': _now(), 'cores': os.cpu_count()}
    return {**row, **mode, 'pipeline': name}


def _now() -> str:
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def run(specs, quick: bool, repeat: int | None, only, results_path: str, root: str,
        workdir: str) -> list[str]:
    """Run the benchmarks, write the results file and the blocks; the failed pipelines."""
    _table.check_docs(root)
    os.makedirs(workdir, exist_ok=True)
    repeat = repeat or (QUICK_REPEAT if quick else FULL_REPEAT)
    old = {}
    if only and os.path.exists(results_path):
        old = {r['pipeline']: r for r in _table.load_results(results_path)['rows']}
    rows = []
    for spec in specs:
        if only and spec[0] not in only:
            rows.append(old.get(spec[0], {'pipeline': spec[0], 'status': 'missing'}))
        else:
            rows.append(run_one(spec, quick, repeat, workdir))
    doc = {'rows': rows}
    _table.write_results(doc, results_path)
    _table.render_docs(doc, root)
    print('\n' + _table.render_text(doc), flush=True)
    return [f"{r['pipeline']} ({r['reason']})" for r in rows
            if r['pipeline'] in {s[0] for s in specs if not only or s[0] in only}
            and r.get('status') != 'ok']


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help='small sizes, one run per side (minutes): for development')
    parser.add_argument('--repeat', type=int, default=None,
                        help=f'runs per side and size, the best counts (default {FULL_REPEAT}; '
                             f'--quick {QUICK_REPEAT})')
    parser.add_argument('--only', action='append', default=None, metavar='PIPELINE',
                        choices=[s[0] for s in PIPELINES],
                        help='run only this pipeline (repeatable); the others keep their rows')
    parser.add_argument('--render', action='store_true',
                        help='run nothing: re-render the README and docs blocks from '
                             'benchmarks/results.json')
    parser.add_argument('--no_streaming', action='store_true',
                        help='skip the streaming benchmarks after the table')
    args = parser.parse_args(argv)
    if args.render:
        doc = _table.load_results(_table.RESULTS)
        _table.render_docs(doc)
        print(_table.render_text(doc))
        return 0
    failed = run(PIPELINES, args.quick, args.repeat, args.only, _table.RESULTS, _table.ROOT,
                 os.path.join(_table.ROOT, 'bench_output', 'results'))
    if not (args.quick or args.no_streaming or args.only):
        for script in STREAMING:
            print(f'==> {script} (streaming; its own printout, not in the table)', flush=True)
            code = subprocess.call([sys.executable, os.path.join(HERE, script)])
            if code != 0:
                failed.append(f'{script} (exited {code})')
    if failed:
        print(f'make bench: FAILED: {"; ".join(failed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
