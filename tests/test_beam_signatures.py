"""The suite's signature cache (tests/beam_signatures.py) gives Beam's own answers."""
from __future__ import annotations

import functools
import inspect

import apache_beam as beam
from apache_beam.transforms import core, userstate
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.typehints import decorators
from apache_beam.utils.timestamp import Timestamp
import beam_signatures


class _Stateful(beam.DoFn):
    BAG = BagStateSpec('bag', beam.coders.VarIntCoder())
    TIMER = TimerSpec('timer', beam.TimeDomain.WATERMARK)

    def process(self, element, bag=beam.DoFn.StateParam(BAG),
                timer=beam.DoFn.TimerParam(TIMER), ts=beam.DoFn.TimestampParam):
        yield element

    @on_timer(TIMER)
    def expired(self, bag=beam.DoFn.StateParam(BAG)):
        yield Timestamp(0)


def _lambda_with_a_window(x, w=beam.DoFn.WindowParam):
    return x


def test_the_suite_runs_with_the_cache_installed():
    assert core.get_signature is beam_signatures.get_signature


def test_cached_signatures_equal_beams_for_every_kind_of_callable():
    fns = [_Stateful().process, _Stateful().expired, _Stateful().start_bundle,
           _lambda_with_a_window, lambda x, y=2: x, functools.partial(_lambda_with_a_window, 1),
           str.strip, len, int, beam.Map(len).fn.process]
    for fn in fns:
        for _ in range(2):                      # computed, then looked up
            assert beam_signatures.get_signature(fn) == decorators.get_signature(fn), fn
    # a bound method is keyed by its function: two instances, one entry, the same answer
    a, b = _Stateful(), _Stateful()
    assert beam_signatures.get_signature(a.process) is beam_signatures.get_signature(b.process)
    assert beam_signatures.get_signature(a.process) == inspect.signature(b.process)


def test_state_and_timer_specs_are_beams_with_or_without_the_cache():
    with_cache = userstate.get_dofn_specs(_Stateful())
    beam_signatures.uninstall()
    try:
        without = userstate.get_dofn_specs(_Stateful())
    finally:
        beam_signatures.install()
    assert with_cache == without == ({_Stateful.BAG}, {_Stateful.TIMER})
    assert userstate.get_dofn_specs(beam.Map(len).fn) == (set(), set())


class _Holder:
    def plain(self, x):
        return x

    def windowed(self, x, w=beam.DoFn.WindowParam):
        return x


class _WithAProperty(beam.DoFn):
    def __init__(self, stateful: bool):
        self.stateful = stateful

    @property
    def process(self):   # what Beam finds depends on the instance: never cached
        return _Stateful().process if self.stateful else _Holder().plain


def _specs_without_the_cache(dofn):
    beam_signatures.uninstall()
    try:
        return userstate.get_dofn_specs(dofn)
    finally:
        beam_signatures.install()


def test_dofn_specs_are_cached_per_class_and_the_methods_an_instance_keeps():
    assert userstate.get_dofn_specs is beam_signatures.get_dofn_specs
    h = _Holder()
    dofns = [_Stateful(), _Stateful(), beam.Map(len).fn, beam.Map(h.plain).fn,
             beam.ParDo(_Stateful()).fn, beam.Map(h.windowed).fn]
    for dofn in dofns:
        for _ in range(2):   # computed, then looked up: equal, and sets of the caller's own
            got = userstate.get_dofn_specs(dofn)
            assert got == _specs_without_the_cache(dofn), dofn
            got[0].add('x')
    assert userstate.get_dofn_specs(_Stateful()) == ({_Stateful.BAG}, {_Stateful.TIMER})
    # an instance that keeps another bound method has its own entry
    keep = beam.Map(h.plain).fn
    keep._fn = _Stateful().process
    assert userstate.get_dofn_specs(keep) == _specs_without_the_cache(keep) == (
        {_Stateful.BAG}, {_Stateful.TIMER})
    # a class with a property is computed each time, from what the instance holds
    a, b = _WithAProperty(True), _WithAProperty(False)
    assert userstate.get_dofn_specs(a) == ({_Stateful.BAG}, {_Stateful.TIMER})
    assert userstate.get_dofn_specs(b) == (set(), set())


def test_the_source_text_of_a_function_is_beams():
    fns = [_Stateful().process, _Stateful.expired, _lambda_with_a_window, _Holder().windowed,
           beam.Map(len).fn.process]
    for fn in fns:
        for _ in range(2):   # read, then looked up
            assert core._get_function_body_without_inners(fn) == \
                beam_signatures._BEAMS_BODY(fn), fn
    assert 'yield element' in core._get_function_body_without_inners(_Stateful().process)
    assert core._check_fn_use_yield_and_return(_Stateful().process) is False


def test_options_views_are_beams_and_share_the_options():
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                      StandardOptions, TypeOptions)
    assert PipelineOptions.view_as is beam_signatures.view_as
    flags = ['--runner', 'DirectRunner', '--project', 'p', '--no_pipeline_type_check']
    options = PipelineOptions(flags)
    for cls in (StandardOptions, TypeOptions, GoogleCloudOptions):
        view = options.view_as(cls)
        assert options.view_as(cls) is view                   # looked up
        alone = beam_signatures._BEAMS_VIEW_AS(PipelineOptions(flags), cls)
        assert type(view) is cls and {name: getattr(view, name) for name in
                                      view._visible_option_list()} == {
            name: getattr(alone, name) for name in alone._visible_option_list()}
    # a write through one view is read through every view and the object
    options.view_as(StandardOptions).streaming = True
    assert options.view_as(StandardOptions).streaming and options.get_all_options()[
        'streaming'] is True
    assert options.view_as(TypeOptions).view_as(StandardOptions).streaming is True
    # other flags (a new list) or other options (a new dict): a new view
    before = options.view_as(StandardOptions)
    options._flags = ['--runner', 'DataflowRunner']
    assert options.view_as(StandardOptions) is not before
    assert options.view_as(StandardOptions).runner == 'DirectRunner'   # Beam's own rule:
    # the value stored first stays (view_as fills only the options not set yet)
    options._all_options = dict(options._all_options, runner='X')
    assert options.view_as(StandardOptions).runner == 'X'
