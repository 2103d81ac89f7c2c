"""Training: conversations -> token streams -> a checkpoint the engine serves.

* :mod:`engine.train.data` — texts, tokenizers, cached token arrays, random-window batches
* :mod:`engine.train.schedule` — warm-up + cosine decay, and each preset's training recipe
* :mod:`engine.train.loop` — the trainer: steps, evaluation, best checkpoint
* :mod:`engine.train.state` — a run's resumable state on disk
* :mod:`engine.train.evaluate` — loss, bits/char, sampled replies and their word validity
* :mod:`engine.train.ddp` — several processes under ``torchrun``
* :mod:`engine.train.run` — a run put together from options: data, tokenizer, model, trainer
* :mod:`engine.train.scoring` — scoring a saved checkpoint; publishing to the registry
* :mod:`engine.train.system` — the opted-out users and model announcements, via Redis
* :mod:`engine.train.cli` — ``parley train`` and ``parley eval``
"""
