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
