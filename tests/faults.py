"""The fault points of beamml: where a test may kill (SIGKILL) or hold a run.

The product calls ``beamml.pipelines._platform.faults.fault_point(<name>)`` at each point; it does
nothing unless the environment variable ``BEAMML_FAULT`` names the point. A test sets it
for a subprocess with :func:`kill_at` or :func:`pause_at`. :data:`POINTS` is the one
table of them; ``test_fault_points_are_the_table`` checks that the product calls exactly
these names.

=========================== ============================================================
point                        where
=========================== ============================================================
commit.before_moves          commit step: the graph is done, lock held, results still
                             under the temporary prefix, nothing under the destination
                             changed (a pause here: a run held with its lock)
commit.between_moves         commit step: journal written, half the results moved
commit.after_success         commit step: ``_SUCCESS`` written, lock and journal not yet
                             removed
kmeans.after_first_block     K-means training: block 1's checkpoint written
=========================== ============================================================
"""
from __future__ import annotations

__all__ = ['POINTS', 'COMMIT_STAGES', 'kill_at', 'pause_at']

POINTS = {
    'commit.before_moves': 'commit step, before anything under the destination changes',
    'commit.between_moves': 'commit step, half of the results moved into place',
    'commit.after_success': 'commit step, _SUCCESS written, lock and journal still there',
    'kmeans.after_first_block': 'K-means training, block 1 checkpointed',
}

#: the commit step's points in the order a commit passes them (stages 1, 2, 3)
COMMIT_STAGES = ('commit.before_moves', 'commit.between_moves', 'commit.after_success')


def _spec(point: str, action: str) -> dict:
    assert point in POINTS, f'{point} is not a fault point: {sorted(POINTS)}'
    return {'BEAMML_FAULT': f'{point}:{action}'}


def kill_at(point: str) -> dict:
    """The environment that makes a beamml process SIGKILL itself at ``point``."""
    return _spec(point, 'kill')


def pause_at(point: str, file) -> dict:
    """The environment that holds a beamml process at ``point``: it creates
    ``<file>.reached``, then waits until the test removes ``file``."""
    return _spec(point, f'pause:{file}')
