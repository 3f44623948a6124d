"""The ground floor of beamml, importing nothing else of beamml.

- ``errors``: BeammlError, dead-letter records, the record counters.
- ``jsonable``: the one JSON policy (numpy values, non-finite floats as strings).
- ``documents``: small files beside the results (JSON, markers), local or gs://.
- ``objects``: whole objects, local or on Cloud Storage: create only if absent, delete
  only if unchanged, list, move (what a dated run's lock and commit stand on).
- ``types``: Arrow type tests and the text grammar of numbers.
- ``combining``: ``merge_into_first``, the CombineFns' merge rule.
"""
