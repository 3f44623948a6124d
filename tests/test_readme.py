"""The Python examples of README.md and of every page of docs/ run as written, and show
what they say they show."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pages() -> list[str]:
    """README.md and every Markdown page under docs/, as paths from the repository root."""
    found = ['README.md']
    for folder, _, files in os.walk(os.path.join(ROOT, 'docs')):
        found += sorted(os.path.relpath(os.path.join(folder, f), ROOT)
                        for f in files if f.endswith('.md'))
    return found


def _examples(page: str) -> list[str]:
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        text = f.read()
    return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


EXAMPLES = [(page, i) for page in pages() for i in range(len(_examples(page)))]


def test_the_pages_have_python_examples_and_the_readme_one():
    assert len(EXAMPLES) >= 4
    assert _examples('README.md'), 'the README has no library example'


@pytest.mark.parametrize('page, index', EXAMPLES, ids=[f'{p}-{i + 1}' for p, i in EXAMPLES])
def test_readme_example_runs(page, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _examples(page)[index]
    namespace: dict = {}
    exec(compile(code, f'{page} python example {index + 1}', 'exec'), namespace)
    # the values the comments promise
    if 'IdIndex' in code:
        index_ = namespace['index']
        assert index_.get_users_idx(['u42', 'u7']).tolist() == [1, 0]
        assert index_.get_users_id([1, 0]).tolist() == ['u42', 'u7']
    if 'AverageQueryPrecision' in code:
        from beamml.transforms.metrics import AverageQueryPrecision, Precision
        assert AverageQueryPrecision()(q_id=np.array([1, 1]), predicted_rank=np.array([0, 1]),
                                       truth_relevance=np.array([0, 1])) == 0.5
        assert Precision()(**namespace['arrays']) == pytest.approx(2 / 3)
    if 'list_versions' in code:
        from beamml.transforms.model import CentroidModel, list_versions
        assert list_versions('models') == ['20250101T120000123456Z', '20250102T120000123456Z']
        assert CentroidModel.load('models').centers.tolist() == np.eye(2).tolist()
