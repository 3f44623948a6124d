"""The shape of an input: its Layout (format, id, features, dimension), format names, matching."""
from __future__ import annotations

import dataclasses
import os
import re
import stat

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.core.errors import BeammlError

__all__ = ['INPUT_FORMATS', 'HEAD_BYTES', 'Layout', 'format_of', 'listable', 'as_given',
           'match_input', 'check_local_input', 'printable']

INPUT_FORMATS = ('parquet', 'csv', 'jsonl', 'npy')
_EXTENSIONS = {
    '.parquet': 'parquet', '.pq': 'parquet', '.csv': 'csv', '.jsonl': 'jsonl',
    '.json': 'jsonl', '.ndjson': 'jsonl', '.npy': 'npy',
}
#: how much of the first file (about 1 MB) decides the layout of a text input
HEAD_BYTES = 1 << 20


def printable(text: str) -> str:
    """``text`` fit for a one-line message: control characters, other unprintable ones
    and U+FFFD (an undecodable byte) written as escapes, never raw."""
    if text.isprintable() and '\ufffd' not in text:
        return text
    return ''.join(c if c.isprintable() and c != '\ufffd' else
                   c.encode('unicode_escape').decode('ascii') for c in text)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How rows of the input become points; decided before the graph is built."""
    input_format: str
    columns: tuple[str, ...]          # columns of the first file ('features' for npy)
    id_column: str | None             # None: ids are '<file name>:<row>'
    id_type: str                      # 'int64' or 'string'
    feature_columns: tuple[str, ...]  # scalar numeric columns, or one list column
    list_features: bool               # True: feature_columns[0] holds a list per row
    dimension: int
    # Column types as read from the head of the first file (None for .npy).
    head_schema: pa.Schema | None = dataclasses.field(default=None, compare=False)
    # A column of per-row sample weights (points batches then carry ``weight``).
    weight_column: str | None = None

    @property
    def id_arrow_type(self) -> pa.DataType:
        return pa.int64() if self.id_type == 'int64' else pa.string()

    def points_schema(self) -> pa.Schema:
        fields = [('id', self.id_arrow_type),
                  ('features', pa.list_(pa.float64(), self.dimension))]
        if self.weight_column:
            fields.append(('weight', pa.float64()))
        return pa.schema(fields)

    def read_columns(self) -> list[str] | None:
        """Columns to read; None (every column) for a table read without features."""
        if not self.feature_columns:
            return None
        cols = list(self.feature_columns)
        if self.id_column:
            cols.insert(0, self.id_column)
        if self.weight_column:
            cols.append(self.weight_column)
        return cols


def format_of(path: str, input_format: str | None) -> str:
    """``input_format`` when given (checked), else the format its extension names."""
    if input_format:
        if input_format not in INPUT_FORMATS:
            raise BeammlError(f'unknown input format {input_format!r}; one of {INPUT_FORMATS}')
        return input_format
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise BeammlError(
            f'cannot tell the format of {path} from its extension {ext or "(none)"!r}; '
            f'pass input_format, one of {", ".join(INPUT_FORMATS)}',
            parameters=('input_format',))
    return _EXTENSIONS[ext]


def listable(file_pattern: str) -> str:
    """The pattern as Beam can list it: a local glob with no folder before its first
    wildcard (``part*.csv``) gets ``./`` (Beam lists the folder before the wildcard, ``''``
    for it, which matches nothing); any other pattern unchanged."""
    if '://' in file_pattern or file_pattern.startswith('/'):
        return file_pattern
    prefix = re.match(r'^[^[*?]*', file_pattern).group(0)
    return './' + file_pattern if prefix != file_pattern and '/' not in prefix else file_pattern


def as_given(file_pattern: str, path: str) -> str:
    """A path :func:`listable`'s pattern matched, spelled as the user's pattern spells
    its folder (``part-1.csv`` for ``part*.csv``, not ``./part-1.csv``)."""
    if path.startswith('./') and listable(file_pattern) != file_pattern:
        return path[2:]
    return path


def match_input(file_pattern: str) -> list[tuple[str, int]]:
    """(path, size) of every file matching the pattern, in path order.

    Raises BeammlError when nothing matches, a matched file is empty or, locally, a
    matched path is not a regular file (a FIFO, a device such as ``/dev/zero``: never
    opened, so never waited on) or is a broken symbolic link (which Beam's matching
    leaves out without a word).
    """
    try:
        results = FileSystems.match([listable(file_pattern)])
    except Exception as e:  # BeamIOError: the pattern itself is unreadable
        raise BeammlError(f'cannot list input {file_pattern}: {e}') from e
    files = sorted((as_given(file_pattern, m.path), m.size_in_bytes)
                   for r in results for m in r.metadata_list)
    files = [f for f in files if not f[0].endswith('/')]
    if '://' not in file_pattern:
        check_local_input(file_pattern, [p for p, _ in files])
    if not files:
        raise BeammlError(f'no input file matches {file_pattern}')
    empty = [p for p, size in files if size == 0]
    if empty:
        raise BeammlError(f'input file {empty[0]} is empty (0 bytes)'
                          + (f', and {len(empty) - 1} more' if len(empty) > 1 else ''))
    return files


_FILE_KINDS = ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'),
               (stat.S_ISDIR, 'a directory'))


def check_local_input(file_pattern: str, paths: list[str]) -> None:
    """BeammlError for a local input that is not a regular file, or a broken symbolic link
    the pattern matches (its target missing, or a loop); ``paths``: the files matched."""
    file_pattern = listable(file_pattern)
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            raise BeammlError(f'input file {path} cannot be read: {e.strerror}') from None
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _FILE_KINDS if test(mode)), 'not a file')
            raise BeammlError(f'input file {path} is not a regular file ({what})')
    prefix = re.match(r'^[^[*?]*', file_pattern).group(0)
    if prefix == file_pattern:   # one path
        broken = [file_pattern] if os.path.islink(file_pattern) and \
            not os.path.exists(file_pattern) else []
    else:   # what Beam's listing walks, and drops when it cannot stat
        from apache_beam.io.filesystem import FileMetadata
        root = os.path.dirname(prefix)
        links = [os.path.join(d, name) for d, _, names in os.walk(root) if root
                 for name in names if os.path.islink(os.path.join(d, name))]
        links = [FileMetadata(p, 0) for p in links if not os.path.exists(p)]
        fs = FileSystems.get_filesystem(file_pattern)
        broken = sorted(m.path for m in fs.match_files(links, file_pattern))
    if broken:
        raise BeammlError(f'input file {broken[0]} is a broken symbolic link (its target is '
                          'missing, or a loop)' +
                          (f', and {len(broken) - 1} more' if len(broken) > 1 else ''))
