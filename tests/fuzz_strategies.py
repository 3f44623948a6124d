"""Hypothesis strategies for tests/test_fuzz.py, and the reader worker it runs in a subprocess.

A strategy draws a :class:`Case`: the bytes of one or more input files of one
format (CSV, JSON lines, Parquet, .npy) that mix good rows with malformed ones,
the reader's keyword arguments, and for every row what must become of it
(:class:`Row`: ``ok`` with its id and feature values, ``refused`` as a dead
letter at its data row and physical line, or ``either``, when the rules leave
it open). The oracle is built while the bytes are written, so it knows the
physical line of each row however many blank lines or multi-line quoted fields
precede it.

Run as a script (``python tests/fuzz_strategies.py``), this module is the worker:
it reads one JSON request per line on stdin, runs the readers (or a pipeline's
``run(argv)``) and answers one JSON line, so that a crash inside pyarrow kills
the worker, not pytest.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from typing import Any

NL = '\n'
#: malformations left out of the cases (comma-separated kinds, e.g. while a known bug
#: is being fixed): BEAMML_FUZZ_SKIP=bad_utf8_id,big_int_id
SKIP = {k for k in os.environ.get('BEAMML_FUZZ_SKIP', '').split(',') if k}


def _allowed(kinds: list) -> list:
    return [k for k in kinds if k not in SKIP]


@dataclasses.dataclass
class Row:
    kind: str                 # 'good' or the malformation
    id: Any                   # the id written (None: ids are '<file>:<row>')
    values: list | None       # the feature values a good row must come out with
    expect: str               # ReadPoints: 'ok' | 'refused' | 'either'
    table: str                # ReadTable (structural checks, ids only): same words
    row: int = -1             # data row in its file (0-based)
    line: int | None = None   # physical line (1-based; CSV header = 1), None: binary


@dataclasses.dataclass
class FileCase:
    name: str
    data: bytes
    rows: list


@dataclasses.dataclass
class Case:
    fmt: str
    files: list               # FileCase, written in name order
    kwargs: dict              # inspect_input / read_table_files keyword arguments
    id_mode: str              # 'none' | 'int' | 'str'
    dimension: int
    may_error: str | None = None   # why a one-line BeammlError is an acceptable outcome
    int_ids: bool = False     # the id column must come out int64
    batch_rows: int = 65536   # ReadPoints' batch_rows / plan_reads' split_rows
    split_rows: int = 1 << 20

    def describe(self) -> str:
        parts = [f'format={self.fmt} id_mode={self.id_mode} d={self.dimension} '
                 f'kwargs={self.kwargs} may_error={self.may_error} '
                 f'batch_rows={self.batch_rows} split_rows={self.split_rows}']
        for f in self.files:
            parts.append(f'--- {f.name} ({len(f.data)} bytes): {f.data[:3000]!r}')
            for r in f.rows:
                parts.append(f'    row {r.row} line {r.line}: {r.kind} -> {r.expect}/'
                             f'{r.table} id={r.id!r} values={r.values!r}')
        return '\n'.join(parts)


def expected_id(case: Case, f: FileCase, r: Row):
    return f'{f.name}:{r.row}' if r.id is None else r.id


# ------------------------------------------------------------------------ strategies

def _strategies():
    from hypothesis import strategies as st
    return st


def _finite(st, small: bool):
    if small:
        return st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    return st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                     st.integers(-1000, 1000).map(float),
                     st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1]))


_ID_TEXT = None


def _id_text(st):
    # Any text but a lone '\r' (whose physical line is ambiguous) and surrogates.
    return st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\r'),
                   max_size=6)


class _Ids:
    """Distinct ids of the mode: ints in int64, or strings with a distinct prefix."""

    def __init__(self, draw, mode: str, json_words: bool = False):
        self.draw, self.mode, self.used, self.k = draw, mode, set(), 0
        self.json_words = json_words

    def __call__(self):
        st = _strategies()
        self.k += 1
        if self.mode == 'none':
            return None
        if self.mode == 'int':
            v = self.draw(st.one_of(st.integers(0, 10 ** 6),
                                    st.integers(-2 ** 63, 2 ** 63 - 1)))
        elif self.json_words and self.draw(st.integers(0, 9)) == 0:
            v = self.draw(st.sampled_from(['NaN', 'Infinity', '-Infinity', '1', '007', 'null',
                                           ' x ', 'ü', '{"a":1}']))
        else:
            v = f'u{self.k}_' + self.draw(_id_text(st))
        if v in self.used:
            v = f'u{self.k}_' if self.mode == 'str' else 10 ** 7 + self.k
        self.used.add(v)
        return v


def _num_text(draw, v: float) -> str:
    st = _strategies()
    style = draw(st.integers(0, 5))
    if style == 0 and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if style == 1:
        return ' ' + repr(v) + ' '
    return repr(v)


NON_FINITE_TEXT = {'nan': float('nan'), 'NaN': float('nan'), 'inf': float('inf'),
                   '-inf': float('-inf'), 'Infinity': float('inf'),
                   '-Infinity': float('-inf'), '1e999': float('inf')}


def _csv_field(s: str) -> str:
    if any(c in s for c in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def csv_cases(small: bool = False, max_rows: int = 8):
    st = _strategies()

    @st.composite
    def build(draw):
        d = draw(st.integers(1, 3))
        id_mode = draw(st.sampled_from(['none', 'int', 'str']))
        explicit = draw(st.booleans())
        allow_nan = draw(st.integers(0, 4)) == 0
        crlf = draw(st.booleans())
        nl = '\r\n' if crlf else '\n'
        n_files = draw(st.integers(1, 3))
        cols = (['id'] if id_mode != 'none' else []) + [f'x{j}' for j in range(d)]
        ncols = len(cols)
        ids = _Ids(draw, id_mode)
        kinds = ['good'] * 4 + ['few_fields', 'many_fields', 'non_finite', 'not_number',
                                'missing_value', 'blank_line_before', 'whitespace_line']
        if id_mode != 'none':
            kinds += ['missing_id']
        if id_mode == 'str':
            kinds += ['multiline_id', 'bad_utf8_id']
        if id_mode == 'int':
            kinds += ['big_int_id']
        if explicit:
            kinds += ['bad_utf8_value']
        case = Case('csv', [], {}, id_mode, d)
        first_empty = draw(st.integers(0, 9)) == 0
        normalize_reasons = []
        for fi in range(n_files):
            name = f'part{fi}.csv'
            out = bytearray((','.join(cols) + nl).encode())
            rows = []
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            if fi == 0 and first_empty:
                n = 0
            kinds_here = draw(st.lists(st.sampled_from(_allowed(kinds)), min_size=n, max_size=n))
            if fi == 0 and n and 'good' not in kinds_here:
                kinds_here[draw(st.integers(0, n - 1))] = 'good'
            if fi == 0 and not explicit:   # the head decides the layout: keep it decisive
                n_good = kinds_here.count('good')
                limit = n_good
                kinds_here = [k if k not in ('not_number', 'whitespace_line') or
                              (limit := limit - 1) >= 0 else 'good' for k in kinds_here]
            truncate = n and draw(st.integers(0, 5)) == 0 and ncols >= 2 and (
                fi > 0 or kinds_here.count('good') > 1)
            for ri, kind in enumerate(kinds_here):
                if kind == 'blank_line_before':
                    out += (nl * draw(st.integers(1, 2))).encode()
                    kind = 'good'
                rid = ids()
                vals = [draw(_finite(st, small)) for _ in range(d)]
                fields = ([str(rid) if id_mode == 'int' else _csv_field(rid)]
                          if id_mode != 'none' else [])
                fields += [_num_text(draw, v) for v in vals]
                expect = table = 'ok'
                raw = None
                if kind == 'few_fields' and ncols >= 2:
                    fields = fields[:draw(st.integers(1, ncols - 1))]
                    expect = table = 'refused'
                elif kind == 'many_fields':
                    fields = fields + ['1'] * draw(st.integers(1, 2))
                    expect = table = 'refused'
                elif kind == 'non_finite':
                    j = draw(st.integers(0, d - 1))
                    word = draw(st.sampled_from(sorted(NON_FINITE_TEXT)))
                    fields[ncols - d + j] = word
                    vals[j] = NON_FINITE_TEXT[word]
                    expect = 'ok' if allow_nan else 'refused'
                elif kind == 'not_number':
                    j = draw(st.integers(0, d - 1))
                    fields[ncols - d + j] = _csv_field(draw(st.sampled_from(
                        ['abc', 'x1', '1.2.3', '--1', 'ü', '0x10', '1,5', '""', '1 2'])))
                    expect = 'refused'
                elif kind == 'missing_value':
                    j = draw(st.integers(0, d - 1))
                    # alone on its line, an unquoted empty field is a blank line
                    fields[ncols - d + j] = draw(st.sampled_from(['', '""'] if ncols > 1
                                                                 else ['""']))
                    expect = 'refused'
                elif kind == 'missing_id':
                    fields[0] = draw(st.sampled_from(['', '""'] + (['  '] if id_mode == 'str'
                                                                   else [])))
                    expect = table = 'refused'
                elif kind == 'whitespace_line':
                    raw = b'   '
                    expect = 'refused'
                    table = 'refused' if ncols >= 2 else 'ok'
                elif kind == 'multiline_id':
                    rid = f'u{ids.k}_\n' + draw(_id_text(st)) + '\n'
                    ids.used.add(rid)
                    fields[0] = _csv_field(rid)
                elif kind == 'bad_utf8_id':
                    raw = (','.join([f'u{ids.k}_'] + fields[1:])).encode()
                    raw = raw[:2] + b'\xff\xfe' + raw[2:]
                    expect, table = 'refused', 'either'
                elif kind == 'bad_utf8_value':
                    j = draw(st.integers(0, d - 1))
                    fields[ncols - d + j] = '1\xff'   # marked, replaced by the byte below
                    expect, table = 'refused', 'either'
                elif kind == 'big_int_id':
                    rid = 2 ** 63 + draw(st.integers(0, 10 ** 6))
                    rid = rid if draw(st.booleans()) else -rid - 1
                    fields[0] = str(rid)
                    expect = table = 'either'
                    normalize_reasons.append('big int id')
                elif kind != 'good':
                    kind = 'good'
                if raw is None:
                    raw = ','.join(fields).encode().replace('1\xff'.encode(), b'1\xff')
                last = ri == len(kinds_here) - 1
                if last and truncate and kind in ('good', 'non_finite', 'missing_value'):
                    # cut the last row before its last field separator, outside quotes
                    text = raw
                    cuts = [i for i in range(1, len(text)) if text[i:i + 1] == b','
                            and text[:i].count(b'"') % 2 == 0]
                    if cuts:
                        raw = text[:draw(st.sampled_from(cuts))]
                        kind, expect, table = 'truncated', 'refused', 'refused'
                line = out.count(b'\n') + 1
                out += raw
                if not (last and kind == 'truncated'):
                    out += nl.encode()
                rows.append(Row(kind, rid if id_mode != 'none' else None,
                                vals if expect != 'refused' else None, expect, table,
                                row=len(rows), line=line))
            if draw(st.integers(0, 4)) == 0:
                out += nl.encode()   # a blank line at the end
            case.files.append(FileCase(name, bytes(out), rows))
        if explicit:
            case.kwargs = {'feature_columns': [f'x{j}' for j in range(d)]}
            if id_mode != 'none':
                case.kwargs['id_column'] = 'id'
        if allow_nan:
            case.kwargs['allow_nan'] = True
        first = case.files[0]
        if not first.rows:
            case.may_error = 'the first file has a header only'
        if id_mode == 'int':
            head_ids = [r for r in first.rows if r.kind not in (
                'few_fields', 'many_fields', 'whitespace_line', 'missing_id', 'truncated')]
            case.int_ids = bool(head_ids) and not normalize_reasons
        case.batch_rows = draw(st.sampled_from([65536, 1, 2, 3]))
        return case

    return build()


def jsonl_cases(small: bool = False, max_rows: int = 8):
    st = _strategies()

    @st.composite
    def build(draw):
        d = draw(st.integers(1, 3))
        id_mode = draw(st.sampled_from(['none', 'int', 'str']))
        list_mode = draw(st.booleans())
        explicit = draw(st.booleans())
        allow_nan = draw(st.integers(0, 4)) == 0
        crlf = draw(st.booleans())
        nl = b'\r\n' if crlf else b'\n'
        n_files = draw(st.integers(1, 3))
        ids = _Ids(draw, id_mode, json_words=True)
        kinds = ['good'] * 4 + ['not_json', 'non_object', 'bad_utf8', 'non_finite',
                                'blank_line_before']
        kinds += (['wrong_dim', 'bad_element', 'features_not_list', 'features_missing']
                  if list_mode else ['scalar_bad', 'scalar_missing'])
        if id_mode != 'none':
            kinds += ['id_missing', 'id_container']
        if id_mode == 'int':
            kinds += ['big_int_id']
        case = Case('jsonl', [], {}, id_mode, d)
        int_ok = id_mode == 'int'
        for fi in range(n_files):
            name = f'part{fi}.jsonl'
            out = bytearray()
            rows = []
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            kinds_here = draw(st.lists(st.sampled_from(_allowed(kinds)), min_size=n, max_size=n))
            if fi == 0 and 'good' not in kinds_here:
                kinds_here[draw(st.integers(0, n - 1))] = 'good'
            if fi == 0 and not explicit:
                limit = kinds_here.count('good') - 1
                kinds_here = [k if k not in ('wrong_dim', 'features_not_list', 'scalar_bad',
                                             'id_container', 'bad_element')
                              or (limit := limit - 1) >= 0 else 'good' for k in kinds_here]
            if fi == 0 and 'id_container' in kinds_here or (
                    fi == 0 and 'big_int_id' in kinds_here):
                int_ok = False
            truncate = n and draw(st.integers(0, 5)) == 0 and (
                fi > 0 or kinds_here.count('good') > 1)
            for ri, kind in enumerate(kinds_here):
                if kind == 'blank_line_before':
                    for _ in range(draw(st.integers(1, 2))):
                        out += draw(st.sampled_from([b'', b'  ', b'\t'])) + nl
                    kind = 'good'
                rid = ids()
                vals = [draw(_finite(st, small)) for _ in range(d)]
                obj: dict = {}
                if id_mode != 'none':
                    obj['id'] = rid
                if list_mode:
                    obj['features'] = [int(v) if v.is_integer() and abs(v) < 1e15 and
                                       draw(st.booleans()) else v for v in vals]
                else:
                    for j, v in enumerate(vals):
                        obj[f'x{j}'] = v
                if draw(st.integers(0, 3)) == 0:
                    obj['note'] = draw(st.sampled_from(['hello', 'ü', '', 'a"b', 'x\ny']))
                expect = table = 'ok'
                raw = None
                feat_keys = ['features'] if list_mode else [f'x{j}' for j in range(d)]
                if kind == 'not_json':
                    raw = draw(st.sampled_from([b'not json', b'{bad', b'{"id": 1,', b'}',
                                                b'{"a":1}}', b'{"id":"a" "x":1}', b'{]']))
                    expect = table = 'refused'
                elif kind == 'non_object':
                    raw = draw(st.sampled_from([b'null', b'42', b'[1,2]', b'"x"', b'true',
                                                b'-1', b' null']))
                    expect = table = 'refused'
                elif kind == 'bad_utf8':
                    obj['note'] = 'B\u0100D'
                    raw = json.dumps(obj, ensure_ascii=False).encode().replace(
                        'B\u0100D'.encode(), b'B\xff\xfeD')
                    expect = table = 'refused'
                elif kind == 'non_finite':
                    j = draw(st.integers(0, d - 1))
                    word, value = draw(st.sampled_from([
                        ('"NaN"', float('nan')), ('"Infinity"', float('inf')),
                        ('"-Infinity"', float('-inf')), ('NaN', float('nan')),
                        ('Infinity', float('inf')), ('1e400', float('inf')),
                        ('-1e400', float('-inf'))]))
                    vals[j] = value
                    marker = 987654.125
                    if list_mode:
                        obj['features'][j] = marker
                    else:
                        obj[f'x{j}'] = marker
                    raw = json.dumps(obj).encode().replace(b'987654.125', word.encode(), 1)
                    expect = 'ok' if allow_nan else 'refused'
                    if 'e400' in word:   # inf, or an invalid line? (a question)
                        table = 'either'
                        if allow_nan:
                            expect = 'either'
                elif kind == 'wrong_dim':
                    k = draw(st.integers(0, d + 2).filter(lambda m: m != d))
                    obj['features'] = [1.0] * k
                    expect = 'refused'
                elif kind == 'bad_element':
                    j = draw(st.integers(0, d - 1))
                    obj['features'][j] = draw(st.sampled_from([None, 'x', [1.0], {}, True]))
                    expect, table = 'refused', 'either'
                elif kind == 'features_not_list':
                    obj['features'] = draw(st.sampled_from([5, 'abc', {'a': 1}, True]))
                    expect, table = 'refused', 'either'
                elif kind in ('features_missing', 'scalar_missing'):
                    key = draw(st.sampled_from(feat_keys))
                    # a key left out of the head's first line would change the feature
                    # order of an inferred layout (keys in order of first appearance)
                    if draw(st.booleans()) and (explicit or list_mode or fi > 0):
                        del obj[key]
                    else:
                        obj[key] = None
                    expect = 'refused'
                elif kind == 'scalar_bad':
                    obj[draw(st.sampled_from(feat_keys))] = draw(st.sampled_from(
                        ['abc', '1', [1.0], {'a': 1}, True]))
                    expect, table = 'refused', 'either'
                elif kind == 'id_missing':
                    choice = draw(st.sampled_from(['del', None, '', '  ']))
                    if choice == 'del':
                        del obj['id']
                    else:
                        obj['id'] = choice
                    expect = table = 'refused'
                elif kind == 'id_container':
                    obj['id'] = draw(st.sampled_from([[1], {'a': 1}, [], ['x']]))
                    expect = table = 'refused'
                elif kind == 'big_int_id':
                    big = 2 ** 63 + draw(st.integers(0, 10 ** 6))
                    obj['id'] = rid = big if draw(st.booleans()) else -big - 1
                    expect = table = 'either'
                    int_ok = False
                elif kind != 'good':
                    kind = 'good'
                if raw is None:
                    keys = list(obj)
                    order = list(draw(st.permutations(keys)))
                    if not explicit:   # the head's key order is the feature order
                        xs = iter(sorted(k for k in order if k.startswith('x')))
                        order = [next(xs) if k.startswith('x') else k for k in order]
                    obj = {k: obj[k] for k in order}
                    sep = draw(st.sampled_from([None, (',', ':')]))
                    raw = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                                     separators=sep).encode()
                last = ri == len(kinds_here) - 1
                if last and truncate and len(raw) > 2 and raw.startswith(b'{'):
                    raw = raw[:draw(st.integers(1, len(raw) - 1))]
                    kind, expect, table = 'truncated', 'refused', 'refused'
                line = out.count(b'\n') + 1
                out += raw
                if not (last and kind == 'truncated'):
                    out += nl
                if (isinstance(rid, int) and abs(rid) >= 2 ** 53 and 'big_int_id' in kinds_here
                        and kind != 'big_int_id'):
                    # pyarrow reads the block as floats when one id is beyond int64; an id
                    # of 2**53 or more is then not known exactly and may be refused (also
                    # in a table read, where a row without features is otherwise kept)
                    expect = 'either' if expect == 'ok' else expect
                    table = 'either' if table == 'ok' else table
                rows.append(Row(kind, rid if id_mode != 'none' else None,
                                vals if expect != 'refused' else None, expect, table,
                                row=len(rows), line=line))
            if draw(st.integers(0, 4)) == 0:
                out += nl
            if not out:
                out = bytearray(nl)
            case.files.append(FileCase(name, bytes(out), rows))
        if explicit:
            case.kwargs = {'feature_columns': ['features'] if list_mode else
                           [f'x{j}' for j in range(d)]}
            if list_mode:
                case.kwargs['dimension'] = d
            if id_mode != 'none':
                case.kwargs['id_column'] = 'id'
        if allow_nan:
            case.kwargs['allow_nan'] = True
        case.int_ids = int_ok
        case.batch_rows = draw(st.sampled_from([65536, 1, 2]))
        return case

    return build()


def parquet_cases(small: bool = False, max_rows: int = 10):
    st = _strategies()

    @st.composite
    def build(draw):
        import pyarrow as pa
        import pyarrow.parquet as pq
        d = draw(st.integers(1, 3))
        id_mode = draw(st.sampled_from(['none', 'int', 'str']))
        list_kind = draw(st.sampled_from([None, 'list', 'fixed']))
        explicit = draw(st.booleans()) or list_kind == 'list' and draw(st.booleans())
        allow_nan = draw(st.integers(0, 4)) == 0
        n_files = draw(st.integers(1, 3))
        ids = _Ids(draw, id_mode)
        kinds = ['good'] * 4 + ['null_value', 'non_finite']
        if list_kind == 'list':
            kinds += ['wrong_dim', 'null_list']
        if id_mode != 'none':
            kinds += ['null_id']
        if id_mode == 'str':
            kinds += ['empty_id']
        case = Case('parquet', [], {}, id_mode, d, int_ids=id_mode == 'int')
        for fi in range(n_files):
            name = f'part{fi}.parquet'
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            kinds_here = draw(st.lists(st.sampled_from(_allowed(kinds)), min_size=n, max_size=n))
            if fi == 0 and 'good' not in kinds_here:
                kinds_here[0] = 'good'
            if fi == 0 and not explicit and list_kind == 'list':
                limit = kinds_here.count('good') - 1
                kinds_here = [k if k != 'wrong_dim' or (limit := limit - 1) >= 0 else 'good'
                              for k in kinds_here]
            rows, id_col, feats = [], [], []
            for kind in kinds_here:
                rid = ids()
                vals = [draw(_finite(st, small)) for _ in range(d)]
                fv: list = list(vals)
                expect = table = 'ok'
                if kind == 'null_value':
                    fv[draw(st.integers(0, d - 1))] = None
                    expect = 'refused'
                elif kind == 'non_finite':
                    j = draw(st.integers(0, d - 1))
                    fv[j] = vals[j] = draw(st.sampled_from([float('nan'), float('inf'),
                                                            float('-inf')]))
                    expect = 'ok' if allow_nan else 'refused'
                elif kind == 'wrong_dim':
                    fv = [1.0] * draw(st.integers(0, d + 2).filter(lambda m: m != d))
                    expect = 'refused'
                elif kind == 'null_list':
                    fv = None
                    expect = 'refused'
                elif kind == 'null_id':
                    rid = None
                    expect = table = 'refused'
                elif kind == 'empty_id':
                    rid = draw(st.sampled_from(['', '  ', '\t']))
                    expect = table = 'refused'
                rows.append(Row(kind, rid, vals if expect != 'refused' else None, expect,
                                table, row=len(rows), line=None))
                id_col.append(rid)
                feats.append(fv)
            cols = {}
            if id_mode != 'none':
                cols['id'] = pa.array(id_col, pa.int64() if id_mode == 'int' else pa.string())
            if list_kind is None:
                for j in range(d):
                    cols[f'x{j}'] = pa.array([None if f is None else f[j] for f in feats],
                                             pa.float64())
            elif list_kind == 'fixed':
                cols['features'] = pa.array(feats, pa.list_(pa.float64(), d))
            else:
                cols['features'] = pa.array(feats, pa.list_(pa.float64()))
            buf = io.BytesIO()
            pq.write_table(pa.table(cols), buf,
                           row_group_size=draw(st.integers(1, max(1, n))) if n else None)
            data = buf.getvalue()
            if fi > 0 and draw(st.integers(0, 9)) == 0:
                data = data[:draw(st.integers(1, len(data) - 1))]
                case.may_error = 'a truncated parquet file'
                for r in rows:
                    r.expect = r.table = 'either'
            case.files.append(FileCase(name, data, rows))
            for r in rows:   # rows that a null list of a fixed_size_list column keeps
                pass
        if explicit:
            case.kwargs = {'feature_columns': ['features'] if list_kind else
                           [f'x{j}' for j in range(d)]}
            if list_kind == 'list':
                case.kwargs['dimension'] = d
            if id_mode != 'none':
                case.kwargs['id_column'] = 'id'
        if allow_nan:
            case.kwargs['allow_nan'] = True
        case.batch_rows = draw(st.sampled_from([65536, 1, 2, 3]))
        case.split_rows = draw(st.sampled_from([1 << 20, 1, 2, 4]))
        return case

    return build()


def npy_cases(small: bool = False, max_rows: int = 10):
    st = _strategies()

    @st.composite
    def build(draw):
        import numpy as np
        d = draw(st.integers(1, 3))
        allow_nan = draw(st.integers(0, 4)) == 0
        n_files = draw(st.integers(1, 3))
        case = Case('npy', [], {}, 'none', d)
        if draw(st.booleans()):
            case.kwargs['dimension'] = d
        for fi in range(n_files):
            name = f'part{fi}.npy'
            # the layout comes from the first file with rows: keep it the first file
            n = draw(st.integers(0 if n_files == 1 else 1, max_rows) if fi == 0
                     else st.integers(0, max_rows))
            dtype = np.dtype(draw(st.sampled_from(['<f8', '>f8', '<f4', '<i8', '<i4', 'u1',
                                                   '?', '<f2'])))
            shape_kind = 'ok'
            dd = d
            if fi > 0:
                shape_kind = draw(st.sampled_from(_allowed(['ok'] * 6 + [
                    'other_dim', 'one_d', 'three_d', 'truncated'])))
                if shape_kind == 'other_dim':
                    dd = draw(st.integers(1, 4).filter(lambda m: m != d))
            if dtype.kind == 'f':
                values = draw(st.lists(st.lists(_finite(st, True), min_size=dd, max_size=dd),
                                       min_size=n, max_size=n))
                with np.errstate(over='ignore'):
                    X = np.array(values, dtype=np.float64).reshape(n, dd).astype(dtype)
            elif dtype.kind == 'b':
                X = np.array(draw(st.lists(st.booleans(), min_size=n * dd, max_size=n * dd)),
                             dtype=bool).reshape(n, dd)
            else:
                info = np.iinfo(dtype)
                X = np.array(draw(st.lists(st.integers(int(info.min), int(info.max)),
                                           min_size=n * dd, max_size=n * dd)),
                             dtype=dtype).reshape(n, dd)
            if dtype.kind == 'f' and n:
                for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
                    X[i, draw(st.integers(0, dd - 1))] = draw(st.sampled_from(
                        [np.nan, np.inf, -np.inf]))
            if draw(st.booleans()):
                X = np.asfortranarray(X)
            if shape_kind == 'one_d':
                X = X.reshape(-1)
            elif shape_kind == 'three_d':
                X = X.reshape(n, dd, 1)
            buf = io.BytesIO()
            np.save(buf, X)
            data = buf.getvalue()
            X64 = np.asarray(X, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, dd))
            rows = []
            for i in range(n):
                finite = bool(np.isfinite(X64[i]).all())   # float16 overflows to inf too
                expect = 'ok' if finite or allow_nan else 'refused'
                rows.append(Row('good' if finite else 'non_finite', None,
                                X64[i].tolist() if expect == 'ok' else None, expect, 'ok',
                                row=i, line=None))
            if shape_kind != 'ok':
                case.may_error = f'a .npy file of shape kind {shape_kind}'
                for r in rows:
                    r.expect = 'refused' if shape_kind == 'other_dim' else 'either'
                    r.table = 'either'
                    r.values = None
                if shape_kind == 'truncated':
                    data = data[:len(data) - draw(st.integers(1, max(1, X.nbytes)))]
            case.files.append(FileCase(name, data, rows))
        if allow_nan:
            case.kwargs['allow_nan'] = True
        case.batch_rows = draw(st.sampled_from([65536, 1, 2, 3]))
        case.split_rows = draw(st.sampled_from([1 << 20, 1, 2, 4]))
        return case

    return build()


CASES = {'csv': csv_cases, 'jsonl': jsonl_cases, 'parquet': parquet_cases, 'npy': npy_cases}


def write_case(case: Case, folder: str) -> str:
    """Write the case's files into ``folder``; returns the glob that matches them."""
    os.makedirs(folder, exist_ok=True)
    for f in case.files:
        with open(os.path.join(folder, f.name), 'wb') as fh:
            fh.write(f.data)
    return os.path.join(folder, f'part*.{case.fmt}')


# ----------------------------------------------------------------------------- worker

def _fhex(v: float) -> str:
    return float(v).hex()


def _read(req: dict) -> dict:
    """Read like read_table_files, and file by file like ReadPoints / ReadTable do."""
    import numpy as np
    from beamml.transforms.io import read_table_files
    from beamml.transforms.io.inspection import inspect_input
    from beamml.transforms.io.rows import table_checks, to_points
    from beamml.transforms.io.sources import plan_reads, read_file_batches
    kwargs = dict(req['kwargs'])
    pattern = req['pattern']
    out: dict = {}
    # 1. read_table_files
    table, dead = read_table_files(pattern, **kwargs)
    X = (table.column('features').combine_chunks().flatten().to_numpy(zero_copy_only=False)
         .reshape(table.num_rows, -1) if table.num_rows else np.zeros((0, 0)))
    out['whole'] = {'ids': table.column('id').to_pylist(), 'id_type': str(table.schema.field(
        'id').type), 'features': [[_fhex(v) for v in x] for x in X.tolist()],
        'dead': [[d['file'], d['row'], d['line'], d['reason']] for d in dead]}
    # 2. file by file, in small batches and split work items, points and table
    allow_nan = kwargs.pop('allow_nan', False)
    for mode in ('points', 'table'):
        paths, layout = inspect_input(pattern, need_features=mode == 'points', **kwargs)
        read = ok = refused = 0
        ids, feats, dls = [], [], []
        for path in paths:
            for p, part in plan_reads(path, layout, req['split_rows']):
                for item in read_file_batches(p, layout, req['batch_rows'], part):
                    if isinstance(item, dict):
                        read += 1
                        refused += 1
                        dls.append(item)
                        continue
                    read += item.table.num_rows
                    if mode == 'points':
                        b, dl = to_points(item, layout, p, allow_nan)
                    else:
                        b, dl = table_checks(item, layout, p, True)
                    refused += len(dl)
                    dls.extend(dl)
                    if b is not None and b.num_rows:
                        ok += b.num_rows
                        if mode == 'points':
                            ids += b.column('id').to_pylist()
                            feats += [[_fhex(v) for v in x] for x in
                                      b.column('features').to_pylist()]
                        else:
                            ids += list(zip(b.column('_file').to_pylist(),
                                            b.column('_row').to_pylist(),
                                            b.column(layout.id_column).to_pylist()
                                            if layout.id_column else [None] * b.num_rows))
        out[mode] = {'read': read, 'ok': ok, 'refused': refused, 'ids': ids,
                     'features': feats,
                     'dead': [[d['file'], d['row'], d['line'], d['reason']] for d in dls]}
    return out


def _pipeline(req: dict) -> dict:
    import importlib
    from beamml.pipelines._platform import main as process
    captured = {}
    orig = process.report

    def report(result, **kw):
        counts = orig(result, **kw)
        captured['counts'] = counts
        return counts
    process.report = report
    try:
        importlib.import_module(f'beamml.pipelines.{req["pipeline"]}').run(req['argv'])
    finally:
        process.report = orig
    return {'counts': captured.get('counts')}


def worker() -> None:
    """Answer one JSON request per stdin line with one JSON line on the real stdout
    (anything the libraries print goes to stderr)."""
    import traceback
    reply = os.fdopen(os.dup(1), 'w', encoding='utf-8')
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import beam_signatures
    beam_signatures.install()   # as in the suite's own processes (conftest.py)
    from beamml.transforms.core.errors import BeammlError
    for line in sys.stdin:
        req = json.loads(line)
        try:
            result = {'ok': _read(req) if req['op'] == 'read' else _pipeline(req)}
        except BeammlError as e:
            result = {'beamml_error': str(e)}
        except BaseException as e:   # noqa: B902 - reported to the test, which fails
            result = {'exception': f'{type(e).__name__}: {e}',
                      'traceback': traceback.format_exc()}
        reply.write(json.dumps(result, default=repr) + '\n')
        reply.flush()


if __name__ == '__main__':
    worker()
