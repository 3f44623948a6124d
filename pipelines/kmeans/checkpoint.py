"""A K-means training run's folder: its flags, checkpoints, point cache manifest and counts.

File I/O only (local or gs://, through Beam's FileSystems). ``beamml kmeans``
trains in blocks of iterations, one pipeline run each; between blocks the
state lives here, so a killed or failed run resumes (``--resume``) where its
last block ended::

    <model_dir>/_runs/<version>/run.json           flags, model config, cache folder
    <model_dir>/_runs/<version>/block-NNNN.json    the state after block N (and the
                                                   result, when the training stopped)
    <model_dir>/_runs/<version>/manifest.json      the point cache's files (centred, raw)
    <model_dir>/_runs/<version>/ranges.json        the raw features' and norms' min and max
                                                   (the baseline's histogram edges)
    <model_dir>/_runs/<version>/final.json         the final pass's result, sample.npy its
                                                   report sample (read back at once)
    <model_dir>/_runs/<version>/counts.json        records read / ok / refused
    <model_dir>/_runs/<version>/training-errors-*  the input's dead letters
    <model_dir>/_runs/<version>/cache/             the point cache (local model dirs)

A finished run moves its summary and dead letters into ``<model_dir>/<version>/``
(then ``model.json`` and ``LATEST`` are written) and removes its folder; a failed
one moves them to ``<model_dir>/_failed/<version>/``. Neither ``_runs`` nor
``_failed`` can be taken for a version (a version name starts with a letter or a
digit, and holds a ``model.json``).
"""
from __future__ import annotations

import os
import posixpath
import shutil
from typing import Any

from apache_beam.io.filesystems import FileSystems

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.documents import exists, is_remote, read_json, write_json
from beamml.transforms.kmeans.centring import merge_ranges

__all__ = ['RUNS_DIR', 'FAILED_DIR', 'RESULT_FILE', 'TRAINING_FLAGS', 'TrainingRun',
           'input_fingerprints']

RUNS_DIR = '_runs'
FAILED_DIR = '_failed'
RESULT_FILE = 'training.json'
#: the flags a resumed run must share with the run it continues
TRAINING_FLAGS = ('input', 'input_format', 'id_column', 'feature_columns', 'dimension', 'k',
                  'max_iter', 'tol', 'init', 'random_state', 'empty_cluster',
                  'init_sample_size', 'init_steps', 'oversampling_factor', 'block_size', 'dtype',
                  'weight_column', 'distance', 'n_init')
#: what a flag saved by an earlier beamml (which did not have it) was
_FLAG_DEFAULTS = {'distance': 'euclidean', 'n_init': 'auto'}


def _files_under(folder: str) -> list[str]:
    try:
        return sorted(m.path for r in FileSystems.match([FileSystems.join(folder, '**')])
                      for m in r.metadata_list)
    except Exception:   # no such folder
        return []


def _remove_folder(folder: str) -> None:
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    files = _files_under(folder)
    if files:
        FileSystems.delete(files)


def input_fingerprints(paths) -> list[dict]:
    """``[{path, size, updated}]`` of the input files (``updated``: the modification
    time, the object's update time on gs://), so ``--resume`` can refuse an input that
    changed under a training."""
    out = []
    for result in FileSystems.match(list(paths)):
        for m in result.metadata_list:
            out.append({'path': m.path, 'size': int(m.size_in_bytes),
                        'updated': float(m.last_updated_in_seconds)})
    return sorted(out, key=lambda f: f['path'])


class TrainingRun:
    """The folder of one training run, ``<model_dir>/<parent>/<version>``."""

    def __init__(self, model_dir: str, version: str, parent: str = RUNS_DIR):
        self.model_dir, self.version, self.parent = model_dir, version, parent
        self.folder = FileSystems.join(model_dir, parent, version)
        self._run: dict | None = None
        #: what this process's pipelines read (pipelines.kmeans.final.run_counted)
        self.cost: dict[str, Any] = {}

    # ------------------------------------------------------------------ finding a run
    @classmethod
    def find(cls, model_dir: str, which: str) -> 'TrainingRun':
        """The run ``--resume`` names: a version, or ``latest`` (the newest unfinished)."""
        runs = sorted({posixpath.basename(posixpath.dirname(m.path.replace(os.sep, '/')))
                       for r in _match(FileSystems.join(model_dir, RUNS_DIR, '*', 'run.json'))
                       for m in r.metadata_list})
        if which == 'latest':
            if not runs:
                raise BeammlError(f'--resume: {model_dir} has no unfinished training '
                                  f'(nothing under {FileSystems.join(model_dir, RUNS_DIR)})')
            which = runs[-1]
        elif which not in runs:
            raise BeammlError(f'--resume {which}: no unfinished training of that version in '
                              f'{model_dir} (unfinished: {", ".join(runs) or "none"})')
        return cls(model_dir, which)

    # ------------------------------------------------------------------ run.json
    def start(self, flags: dict[str, Any], config: dict[str, Any], cache_dir: str,
              inputs: list[dict] | None = None) -> None:
        """Write ``run.json``: the flags, the model config, the cache folder and the
        input files' fingerprints (:func:`input_fingerprints`)."""
        self._run = {'version': self.version, 'flags': {k: flags.get(k) for k in TRAINING_FLAGS},
                     'config': config, 'cache_dir': cache_dir, 'inputs': inputs}
        write_json(FileSystems.join(self.folder, 'run.json'), self._run, indent=1)

    def _info(self) -> dict:
        if self._run is None:
            self._run = read_json(FileSystems.join(self.folder, 'run.json'))
        return self._run

    def flags(self) -> dict[str, Any]:
        return dict(self._info()['flags'])

    def config(self) -> dict[str, Any]:
        return dict(self._info()['config'])

    @property
    def cache_dir(self) -> str:
        return self._info()['cache_dir']

    def changed_inputs(self, inputs: list[dict]) -> list[str]:
        """What differs between the input files the run started on and ``inputs`` (both
        :func:`input_fingerprints`); a run saved without them compares nothing."""
        saved = self._info().get('inputs')
        if saved is None:
            return []
        before = {f['path']: f for f in saved}
        now = {f['path']: f for f in inputs}
        changes = [f'{path} is gone' for path in sorted(set(before) - set(now))]
        changes += [f'{path} is new' for path in sorted(set(now) - set(before))]
        for path in sorted(set(before) & set(now)):
            a, b = before[path], now[path]
            if a['size'] != b['size']:
                changes.append(f'{path} was {a["size"]} bytes, now {b["size"]}')
            elif a['updated'] != b['updated']:
                changes.append(f'{path} was modified')
        return changes

    def changed_flags(self, flags: dict[str, Any]) -> list[str]:
        """``--name saved != given`` for each training flag given another value; a
        ``random_state`` not given takes the saved one (the drawn seed)."""
        saved = self.flags()
        drawn = self.config().get('random_state')   # the seed a run without the flag drew
        if saved.get('random_state') is None:
            saved['random_state'] = drawn
        if flags.get('random_state') is None:
            flags['random_state'] = drawn
        for k, default in _FLAG_DEFAULTS.items():
            saved.setdefault(k, default)
        return [f'--{k} was {saved.get(k)!r}, now {flags.get(k)!r}' for k in TRAINING_FLAGS
                if k in flags and flags.get(k) != saved.get(k)]

    # ------------------------------------------------------------------ blocks
    def block_path(self, index: int) -> str:
        return FileSystems.join(self.folder, f'block-{index:04d}.json')

    def read_block(self, index: int) -> dict:
        path = self.block_path(index)
        if not exists(path):
            raise BeammlError(f'block {index} of training {self.version} wrote no checkpoint '
                              f'({path}); rerun with --resume {self.version}')
        return {'index': index, **read_json(path)}

    def last_block(self) -> dict | None:
        """The checkpoint of the last block that finished (None: not even the first)."""
        found = [m.path for r in _match(FileSystems.join(self.folder, 'block-*.json'))
                 for m in r.metadata_list]
        indices = sorted(int(posixpath.basename(p.replace(os.sep, '/'))[6:10]) for p in found)
        return self.read_block(indices[-1]) if indices else None

    # ------------------------------------------------------------------ the point cache
    def write_manifest(self, paths) -> str:
        """(A Beam step.) The cache's centred point files, and the raw ones (the points
        as read, which the final pass reads)."""
        paths = sorted(paths)   # two identical batches share a file: it is listed twice
        is_raw = [posixpath.basename(p.replace(os.sep, '/')).startswith('raw-') for p in paths]
        return write_json(FileSystems.join(self.folder, 'manifest.json'), {
            'points': [p for p, r in zip(paths, is_raw) if not r],
            'raw': [p for p, r in zip(paths, is_raw) if r]})

    def manifest(self) -> list[str]:
        return read_json(FileSystems.join(self.folder, 'manifest.json'))['points']

    def raw_manifest(self) -> list[str]:
        return read_json(FileSystems.join(self.folder, 'manifest.json'))['raw']

    def cache_complete(self, paths: list[str]) -> bool:
        return all(exists(p) for p in paths)

    def write_ranges(self, parts, names: list[str]) -> str:
        """(A Beam step.) ``ranges.json``: the min and max of each raw feature and of the
        L2 norms (``parts``: the per-bundle (min, max) pairs) and the features' names."""
        return write_json(FileSystems.join(self.folder, 'ranges.json'),
                          {**(merge_ranges(parts) or {}), 'names': list(names)})

    def ranges(self) -> dict | None:
        """``ranges.json`` (None: not written, as by a run of an earlier beamml)."""
        path = FileSystems.join(self.folder, 'ranges.json')
        return read_json(path) if exists(path) else None

    # ------------------------------------------------------------------ counts
    def write_counts(self, counts: dict[str, int] | None) -> None:
        write_json(FileSystems.join(self.folder, 'counts.json'), counts or {})

    def counts(self) -> dict[str, Any]:
        path = FileSystems.join(self.folder, 'counts.json')
        found = read_json(path) if exists(path) else {}
        return {k: found.get(k, '?') for k in ('records_read', 'records_ok', 'records_refused')}

    # ------------------------------------------------------------------ dead letters
    @property
    def errors_prefix(self) -> str:
        return FileSystems.join(self.folder, 'training')

    @property
    def errors_glob(self) -> str:
        return f'{self.errors_prefix}-errors-*.jsonl'

    def version_prefix(self, name: str) -> str:
        return FileSystems.join(self.model_dir, self.version, name)

    # ------------------------------------------------------------------ the end
    def _move_outputs(self, dest: str) -> None:
        """Move the dead letters and the summary to ``dest`` (Beam's temporary files of
        an unfinished write are deleted)."""
        outputs = [f for f in _files_under(self.folder)
                   if posixpath.basename(f.replace(os.sep, '/')).startswith('training')]
        keep = [f for f in outputs if '/beam-temp-' not in f.replace(os.sep, '/')]
        if keep:
            if not is_remote(dest):
                os.makedirs(dest, exist_ok=True)
            FileSystems.rename(keep, [FileSystems.join(dest, posixpath.basename(
                f.replace(os.sep, '/'))) for f in keep])

    def complete(self, result: dict[str, Any]) -> None:
        """Write ``<model_dir>/<version>/training.json`` and move the dead letters beside it."""
        vdir = FileSystems.join(self.model_dir, self.version)
        self._move_outputs(vdir)
        write_json(FileSystems.join(vdir, RESULT_FILE), result)

    def fail(self) -> 'TrainingRun':
        """Move this run's outputs to ``<model_dir>/_failed/<version>/`` and remove the run
        (and its cache); returns the failed run's folder as a TrainingRun."""
        failed = TrainingRun(self.model_dir, self.version, FAILED_DIR)
        self._move_outputs(failed.folder)
        self.remove()
        return failed

    def remove(self) -> None:
        """Delete the run's folder and its point cache."""
        try:
            cache_dir = self.cache_dir
        except Exception:   # never started (or a _failed folder)
            cache_dir = None
        if cache_dir and not cache_dir.startswith(self.folder):
            _remove_folder(cache_dir)
        _remove_folder(self.folder)
        parent = FileSystems.join(self.model_dir, self.parent)
        if not is_remote(parent):
            try:
                os.rmdir(parent)   # the last run: no empty _runs folder left
            except OSError:
                pass


def _match(pattern: str):
    try:
        return FileSystems.match([pattern])
    except Exception:
        return []
