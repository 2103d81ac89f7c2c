"""Serving: requests from the queue answered by continuous batching (the engine worker).

One web message's path, module by module::

    worker.py      the event loop: read -> admit -> prepare -> schedule -> write -> release
    admission.py   one request per conversation at a time, a bounded total
    scheduler.py   the torch thread: every conversation advances in one batched step
    batches.py     slot batches (prefill and decode) over the model's preallocated state
    sampling.py    logits -> tokens, each row under its own options
    events.py      outputs -> numbered reply events and error codes, one write per batch

Beside them: ``work.py`` (what crosses between the event loop and the torch thread),
``cache.py`` (conversation state kept in memory, spilled to Redis), ``prompt.py`` (a
conversation as the model reads it), ``cuda_graphs.py`` (the decode step replayed on a GPU),
``metrics.py`` (Prometheus). :mod:`engine.service` puts them together as ``parley engine``.
"""
