"""The README's Python examples run as written, and show what they say they show."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples() -> list[str]:
    text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


def test_the_readme_has_python_examples():
    assert len(_examples()) >= 4


@pytest.mark.parametrize('index', range(len(_examples())))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _examples()[index]
    namespace: dict = {}
    exec(compile(code, f'README.md python example {index + 1}', 'exec'), namespace)
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
