"""Beam's own RunInference, scikit-learn handler, on a Pub/Sub stream: the peer of
``beamml assign --streaming`` in ``bench_streaming.py --runinference``.

    python benchmarks/runinference_streaming.py --input_subscription S --output_topic T
        --model_pickle PATH --stop_after SECONDS

The same path as beamml's run on the same runner (the BundleBasedDirectRunner, Beam's
own local Pub/Sub read): messages (one JSON object ``{"id", "features"}``, a JSON array
of them, or Arrow IPC with the attribute ``format=arrow``) -> (id, point) pairs ->
``RunInference(KeyedModelHandler(SklearnModelHandlerNumpy(model_uri)))`` (Beam batches
the points itself, ``BatchElements``) -> one JSON message per point ``{"id", "cluster"}``
-> ``WriteToPubSub``. The model is a pickled ``sklearn.cluster.KMeans`` whose
``predict`` is the nearest centre. No windows, no checks, no dead letters: what a user
writing the pipeline by hand with Beam's RunInference would have.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def points_of(message):
    """A PubsubMessage -> [(id, point)] (a loop over the message's points: the plain
    pipeline a user would write)."""
    if message.attributes.get('format') == 'arrow':
        import pyarrow as pa
        t = pa.ipc.open_stream(pa.py_buffer(message.data)).read_all()
        ids = t.column('id').to_numpy()
        X = np.asarray(t.column('features').combine_chunks().flatten().to_numpy()
                       ).reshape(len(ids), -1)
        return list(zip(ids.tolist(), X))
    obj = json.loads(message.data)
    objs = obj if isinstance(obj, list) else [obj]
    return [(o['id'], np.asarray(o['features'], dtype=np.float64)) for o in objs]


def to_json(keyed) -> bytes:
    key, result = keyed
    return json.dumps({'id': key, 'cluster': int(result.inference)}).encode()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--input_subscription', required=True)
    ap.add_argument('--output_topic', required=True)
    ap.add_argument('--model_pickle', required=True)
    ap.add_argument('--stop_after', type=float, required=True)
    args = ap.parse_args(argv)

    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
    from apache_beam.options.pipeline_options import PipelineOptions
    options = PipelineOptions(runner='BundleBasedDirectRunner', streaming=True)
    p = beam.Pipeline(options=options)
    (p
     | 'Read' >> beam.io.ReadFromPubSub(subscription=args.input_subscription,
                                        with_attributes=True)
     | 'Points' >> beam.FlatMap(points_of)
     | 'RunInference' >> RunInference(KeyedModelHandler(
         SklearnModelHandlerNumpy(model_uri=args.model_pickle)))
     | 'ToJson' >> beam.Map(to_json)
     | 'Write' >> beam.io.WriteToPubSub(args.output_topic))
    result = p.run()
    time.sleep(args.stop_after)   # the local runner's result has no wait with a timeout
    result.cancel()
    return 0


if __name__ == '__main__':
    sys.exit(main())
