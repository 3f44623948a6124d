"""BeamOptions: Beam's PipelineOptions whose views are made once per class (pipelines/_platform/cli.py)."""
from __future__ import annotations

import pickle

import apache_beam as beam
from apache_beam.options import pipeline_options as po
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, TypeOptions)

import beam_signatures
from beamml.pipelines._platform.cli import BeamOptions


def test_views_are_made_once_and_share_the_options_values():
    options = BeamOptions(['--runner', 'FnApiRunner', '--project', 'p-1'])
    std = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is std
    assert std.runner == 'FnApiRunner'
    assert options.view_as(GoogleCloudOptions).project == 'p-1'
    std.runner = 'DataflowRunner'   # a write through one view is seen by every view
    assert options.view_as(StandardOptions).runner == 'DataflowRunner'
    assert std.view_as(StandardOptions).runner == 'DataflowRunner'   # a view's own view
    assert options.get_all_options()['runner'] == 'DataflowRunner'
    # the same values as Beam's own options, flag for flag
    plain = PipelineOptions(['--runner', 'FnApiRunner', '--project', 'p-1'])
    plain.view_as(StandardOptions).runner = 'DataflowRunner'
    assert options.get_all_options() == plain.get_all_options()


def test_the_view_cache_is_not_pickled():
    options = BeamOptions(['--project', 'p-2'])
    options.view_as(TypeOptions)
    state = options.__getstate__()
    assert '_beamml_views' not in state
    back = pickle.loads(pickle.dumps(options))
    assert back.view_as(GoogleCloudOptions).project == 'p-2'
    assert back.view_as(GoogleCloudOptions) is back.view_as(GoogleCloudOptions)


def test_building_and_running_a_pipeline_makes_few_options_objects(monkeypatch):
    """Beam asks for a view at every step it applies and type-checks: with Beam's own
    options a 3-step pipeline makes ~100 options objects (each an argparse parser); with
    BeamOptions a handful."""
    made = []
    init = po.PipelineOptions.__init__

    def counted(self, *args, **kwargs):
        made.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(po.PipelineOptions, '__init__', counted)

    def run(options):
        made.clear()
        with beam.Pipeline(options=options) as p:
            _ = (p | beam.Create(range(10)) | beam.Map(lambda x: x + 1)
                 | beam.CombineGlobally(sum))
        return len(made)

    beam_signatures.uninstall()   # Beam as a user's process has it (the suite caches views)
    try:
        plain = run(PipelineOptions(['--runner', 'FnApiRunner']))
        cached = run(BeamOptions(['--runner', 'FnApiRunner']))
    finally:
        beam_signatures.install()
    assert cached <= 20 and cached * 4 < plain, (cached, plain)
