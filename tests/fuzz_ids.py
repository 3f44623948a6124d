"""Hypothesis strategies of ids of every type, for tests/test_fuzz.py.

The id rules (transforms/io/ids.py), written out again value by value: ids are int64 or
strings, the input's id type comes from its first file, and a value of any other type or
kind is refused, never converted. Each case: one or more files whose id column has a
drawn type (Parquet) or values of drawn kinds (JSON lines, CSV spellings), and one
feature ``x0``; every row is ``ok`` with the id it must come out with, ``refused``, or
(a JSON integer of 2**53 or more beside floats) ``either``.
"""
from __future__ import annotations

from fuzz_strategies import Case, FileCase, Row, _strategies

__all__ = ['ID_CASES', 'PARQUET_ID_TYPES', 'parquet_id_outcome', 'jsonl_id_outcome',
           'csv_id_outcome']

PARQUET_ID_TYPES = ['int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                    'float16', 'float32', 'float64', 'bool', 'string', 'large_string',
                    'dictionary', 'binary', 'null', 'date32', 'timestamp', 'decimal_int',
                    'decimal_frac', 'list']
_INT_BOUNDS = {f'{p}{b}': ((0, 2 ** b - 1) if p == 'uint' else (-2 ** (b - 1), 2 ** (b - 1) - 1))
               for p in ('int', 'uint') for b in (8, 16, 32, 64)}
_TEXT = 'ab7 \t-\u00fc\u20ac\u4e2d'   # letters, a digit, the blanks both sides agree on


def _float_id(v: float):
    """An integer id of a float: finite, integral, below 2**53 (else refused)."""
    import math
    if math.isfinite(v) and v == int(v) and abs(v) < 2 ** 53:
        return int(v)
    return None


def parquet_id_outcome(type_name: str, v, id_type: str):
    """The id a Parquet value of ``type_name`` comes out as, or None (refused)."""
    import decimal
    if v is None or type_name in ('bool', 'binary', 'null', 'date32', 'timestamp', 'list'):
        return None
    if type_name in ('string', 'large_string', 'dictionary'):
        return v if id_type == 'string' and v.strip(' \t') else None
    if id_type == 'string':
        return None   # a number in a string id column
    if type_name in _INT_BOUNDS:
        return v if -2 ** 63 <= v < 2 ** 63 else None
    if type_name.startswith('float'):
        return _float_id(v)
    d = decimal.Decimal(v)   # decimals
    return int(d) if d == d.to_integral_value() and -2 ** 63 <= d < 2 ** 63 else None


def _parquet_id_values(draw, st, type_name: str, n: int) -> list:
    import math
    specials = [None]
    if type_name in _INT_BOUNDS:
        lo, hi = _INT_BOUNDS[type_name]
        values = st.one_of(st.integers(max(lo, -1000), min(hi, 1000)), st.integers(lo, hi),
                           st.sampled_from([lo, hi] + ([2 ** 63 - 1, 2 ** 63] if hi > 2 ** 63
                                                       else [])))
    elif type_name == 'float16':
        values = st.one_of(st.integers(-2048, 2048).map(float), st.sampled_from(
            [0.5, -2.5, 65504.0, math.nan, math.inf, -math.inf]))
    elif type_name in ('float32', 'float64'):
        width = 32 if type_name == 'float32' else 64
        values = st.one_of(st.integers(-10 ** 6, 10 ** 6).map(float),
                           st.floats(width=width), st.sampled_from(
                               [2.0 ** 53, 2.0 ** 63, -2.0 ** 63, 1e30, 0.5, -0.0]))
    elif type_name == 'bool':
        values = st.booleans()
    elif type_name in ('string', 'large_string', 'dictionary'):
        values = st.text(st.sampled_from(_TEXT), max_size=5)
    elif type_name == 'binary':
        values = st.binary(max_size=4)
    elif type_name in ('date32', 'timestamp'):
        values = st.integers(0, 10 ** 6)
    elif type_name == 'decimal_int':
        values = st.integers(-10 ** 19, 10 ** 19)
    elif type_name == 'decimal_frac':
        values = st.integers(-10 ** 6, 10 ** 6).map(lambda k: f'{k / 100:.2f}')
    elif type_name == 'list':
        values = st.lists(st.integers(0, 9), max_size=2)
    else:   # null
        values = st.none()
    return [draw(st.one_of(st.sampled_from(specials), values) if draw(st.integers(0, 5))
                 else st.none()) if type_name != 'null' else None for _ in range(n)]


def _parquet_id_array(type_name: str, values: list):
    import decimal

    import numpy as np
    import pyarrow as pa
    if type_name == 'float16':
        mask = np.array([v is None for v in values], dtype=bool)
        return pa.array(np.array([0.0 if v is None else v for v in values], np.float16),
                        mask=mask)
    if type_name == 'dictionary':
        return pa.array(values, pa.string()).dictionary_encode()
    if type_name.startswith('decimal'):
        t = pa.decimal128(20, 0) if type_name == 'decimal_int' else pa.decimal128(10, 2)
        return pa.array([None if v is None else decimal.Decimal(v) for v in values], t)
    types = {'timestamp': pa.timestamp('ms'), 'list': pa.list_(pa.int64()),
             'null': pa.null(), 'bool': pa.bool_()}
    return pa.array(values, types.get(type_name) or getattr(pa, type_name)())


def _unique(outcome, used: set):
    """``outcome`` when no earlier good row has that id (a good id comes out once)."""
    if outcome is None or outcome in used:
        return None
    used.add(outcome)
    return outcome


def parquet_id_cases(first_type: str | None = None, max_rows: int = 6):
    """Cases whose first file's id column is of ``first_type`` (drawn when None); a later
    file's is of the same type or another."""
    st = _strategies()

    @st.composite
    def build(draw):
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq
        n_files = draw(st.integers(1, 3))
        first = first_type or draw(st.sampled_from(PARQUET_ID_TYPES))
        id_type = 'int64' if first in _INT_BOUNDS or first.startswith(('float', 'decimal')) \
            else 'string'
        case = Case('parquet', [], {'id_column': 'id', 'feature_columns': ['x0']},
                    'int' if id_type == 'int64' else 'str', 1, int_ids=id_type == 'int64')
        used: set = set()
        x = 0.0
        for fi in range(n_files):
            type_name = first if fi == 0 or draw(st.booleans()) else draw(
                st.sampled_from(PARQUET_ID_TYPES))
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            values = _parquet_id_values(draw, st, type_name, n)
            rows, xs = [], []
            for r, v in enumerate(values):
                x += 1.0
                xs.append(x)
                want = _unique(parquet_id_outcome(type_name, v, id_type), used)
                if want is None and parquet_id_outcome(type_name, v, id_type) is not None:
                    v = None   # the id of a good row written before: a missing one here
                    values[r] = None
                expect = 'ok' if want is not None else 'refused'
                rows.append(Row(f'{type_name}:{v!r}', want, [x] if want is not None else None,
                                expect, expect, row=r, line=None))
            buf = io.BytesIO()
            pq.write_table(pa.table({'id': _parquet_id_array(type_name, values),
                                     'x0': pa.array(xs, pa.float64())}), buf)
            case.files.append(FileCase(f'part{fi}.parquet', buf.getvalue(), rows))
        case.batch_rows = draw(st.sampled_from([65536, 1, 2]))
        case.split_rows = draw(st.sampled_from([1 << 20, 1, 2]))
        return case

    return build()


# JSON spellings of an id: (kind, text) where kind names what the text is
_JSON_IDS = ['int', 'big_int', 'integral_float', 'fraction', 'huge_float', 'nan', 'inf',
             'bool', 'string', 'word', 'blank', 'null', 'missing', 'list', 'object']


def _json_id(draw, st, kind: str):
    """(the value, its JSON text or None for a missing key)."""
    import json
    if kind == 'int':
        v = draw(st.one_of(st.integers(-1000, 1000), st.integers(-2 ** 63, 2 ** 63 - 1)))
    elif kind == 'big_int':
        v = draw(st.sampled_from([2 ** 63, -2 ** 63 - 1, 10 ** 20]))
    elif kind == 'integral_float':
        v = float(draw(st.integers(-10 ** 6, 10 ** 6)))
    elif kind == 'fraction':
        v = draw(st.integers(-1000, 1000)) + 0.5
    elif kind == 'huge_float':
        v = draw(st.sampled_from([1e300, -1e20, 2.0 ** 63, 2.0 ** 53]))
    elif kind == 'nan':
        return float('nan'), 'NaN'
    elif kind == 'inf':
        return (float('inf'), 'Infinity') if draw(st.booleans()) else (float('-inf'),
                                                                        '-Infinity')
    elif kind == 'bool':
        v = draw(st.booleans())
    elif kind == 'string':
        v = 's' + draw(st.text(st.sampled_from(_TEXT), max_size=4))
    elif kind == 'word':
        v = draw(st.sampled_from(['7', '007', 'NaN', 'Infinity', 'true', 'null', '2020-01-01',
                                  '2020-01-02 03:04:05', '1.5', ' x ']))
    elif kind == 'blank':
        v = draw(st.sampled_from(['', ' ', '\t']))
    elif kind == 'null':
        v = None
    elif kind == 'missing':
        return None, None
    elif kind == 'list':
        v = draw(st.sampled_from([[1], [], ['a']]))
    else:
        v = {'a': 1}
    return v, json.dumps(v)


def jsonl_id_outcome(kind: str, v, id_type: str, floats_in_file: bool):
    """The id a JSON id comes out as: a value, None (refused) or 'either' (an integer of
    2**53 or more in a file with floats: pyarrow may read it as a rounded float)."""
    if id_type == 'string':
        return v if kind in ('string', 'word') and v.strip(' \t') else None
    if kind == 'int':
        return 'either' if abs(v) >= 2 ** 53 and floats_in_file else v
    if kind in ('integral_float', 'fraction', 'huge_float', 'nan', 'inf'):
        return _float_id(v)
    return None


def jsonl_id_cases(max_rows: int = 6):
    st = _strategies()

    @st.composite
    def build(draw):
        n_files = draw(st.integers(1, 3))
        files = []
        for fi in range(n_files):
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            kinds = draw(st.lists(st.sampled_from(_JSON_IDS), min_size=n, max_size=n))
            if fi == 0 and kinds[0] == 'missing':
                kinds[0] = 'null'   # the head must hold the key: else 'no id column'
            files.append([(k,) + _json_id(draw, st, k) for k in kinds])
        head = [v for k, v, _ in files[0]]
        texts = [v for v in head if isinstance(v, str) and v.strip(' \t')]
        numbers = [v for v in head if isinstance(v, (int, float)) and not isinstance(v, bool)]
        id_type = 'string' if texts or not numbers else 'int64'
        case = Case('jsonl', [], {'id_column': 'id', 'feature_columns': ['x0']},
                    'int' if id_type == 'int64' else 'str', 1, int_ids=id_type == 'int64')
        used: set = set()
        x = 0.0
        for fi, lines in enumerate(files):
            floats = any(k in ('integral_float', 'fraction', 'huge_float', 'nan', 'inf',
                               'big_int') for k, _, _ in lines)
            out, rows = [], []
            for r, (kind, v, text) in enumerate(lines):
                x += 1.0
                want = jsonl_id_outcome(kind, v, id_type, floats)
                if want == 'either':
                    expect, rid = 'either', v
                else:
                    rid = _unique(want, used)
                    if rid is None and want is not None:   # an id used before: a null one
                        kind, v, text = 'null', None, 'null'
                    expect = 'ok' if rid is not None else 'refused'
                body = f'"x0": {x!r}' if text is None else f'"id": {text}, "x0": {x!r}'
                out.append('{' + body + '}')
                rows.append(Row(f'{kind}:{text}', rid, [x] if expect != 'refused' else None,
                                expect, expect, row=r, line=r + 1))
            data = ''.join(ln + '\n' for ln in out) or '\n'   # an empty file is an error
            case.files.append(FileCase(f'part{fi}.jsonl', data.encode(), rows))
        case.batch_rows = draw(st.sampled_from([65536, 1, 2]))
        return case

    return build()


_CSV_IDS = ['7', '-3', '+5', '007', ' 8 ', '"9"', '0', '9223372036854775807',
            '9223372036854775808', '-9223372036854775809', '1.0', '1.5', '1e3', 'NaN', 'inf',
            'true', 'x', '', '  ', '""', '2020-01-01', '\u0663', 'u']


def csv_id_outcome(field: str, id_type: str):
    """The id a CSV field (as written) comes out as, or None (refused)."""
    import re
    text = field[1:-1] if field.startswith('"') else field
    if not text.strip(' '):
        return None   # missing or empty id
    if id_type == 'string':
        return text
    if re.fullmatch(r' *[-+]?[0-9]+ *', text) and -2 ** 63 <= int(text) < 2 ** 63:
        return int(text)
    return None


def csv_id_cases(max_rows: int = 6):
    st = _strategies()

    @st.composite
    def build(draw):
        import re
        n_files = draw(st.integers(1, 3))
        files = []
        for fi in range(n_files):
            n = draw(st.integers(1 if fi == 0 else 0, max_rows))
            files.append([draw(st.one_of(st.sampled_from(_CSV_IDS), st.integers(-10 ** 6, 10 ** 6)
                                         .map(str))) for _ in range(n)])
        present = [f[1:-1] if f.startswith('"') else f for f in files[0]]
        present = [t for t in present if t.strip(' ')]
        integer = present and all(re.fullmatch(r' *[-+]?[0-9]+ *', t) for t in present)
        id_type = 'int64' if integer else 'string'
        case = Case('csv', [], {'id_column': 'id', 'feature_columns': ['x0']},
                    'int' if id_type == 'int64' else 'str', 1, int_ids=id_type == 'int64')
        used: set = set()
        x = 0.0
        for fi, fields in enumerate(files):
            out, rows = ['id,x0'], []
            for r, field in enumerate(fields):
                x += 1.0
                want = csv_id_outcome(field, id_type)
                rid = _unique(want, used)
                if rid is None and want is not None:
                    field = ''   # the id of a good row written before: a missing one here
                expect = 'ok' if rid is not None else 'refused'
                out.append(f'{field},{x!r}')
                rows.append(Row(f'csv:{field}', rid, [x] if rid is not None else None, expect,
                                expect, row=r, line=r + 2))
            data = ''.join(ln + '\n' for ln in out)
            case.files.append(FileCase(f'part{fi}.csv', data.encode(), rows))
        case.batch_rows = draw(st.sampled_from([65536, 1, 2]))
        return case

    return build()


ID_CASES = {'parquet': parquet_id_cases, 'jsonl': jsonl_id_cases, 'csv': csv_id_cases}
