"""Unbounded sources and windows: the streaming side of the batch graphs.

The streaming sources produce the very RecordBatches the file readers make
(points ``id, features``; prediction-log rows), with the same dead-letter
records and counters, so everything after the source is the batch graph.

Modules
-------
:mod:`~beamml.transforms.streaming.messages`
    Pub/Sub messages (one JSON object, a JSON array of them, or Arrow IPC) into
    RecordBatches and dead letters, without Beam.
:mod:`~beamml.transforms.streaming.pubsub`
    the Beam side: a subscription read into those RecordBatches; rows and dead
    letters out to a topic as JSON objects.
:mod:`~beamml.transforms.streaming.local_pubsub`
    the local runner's Pub/Sub read: pulls of up to ``max_batch_size``, each message
    acknowledged after the output it led to is written, a watermark from the messages.
:mod:`~beamml.transforms.streaming.files`
    a watched file pattern: each new file read once, as it lands.
:mod:`~beamml.transforms.streaming.windows`
    fixed and sliding event-time windows, allowed lateness, pane timing, and the
    dead letters of data too late for its window.
"""
