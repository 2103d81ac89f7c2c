"""Training: conversations -> token streams -> a checkpoint the engine serves.

* :mod:`engine.train.data` — texts, tokenizers, cached token arrays, random-window batches
* :mod:`engine.train.schedule` — warm-up + cosine decay, and each preset's training recipe
* :mod:`engine.train.loop` — the trainer: steps, evaluation, best checkpoint, resume state
* :mod:`engine.train.evaluate` — loss, bits/char, sampled replies and their word validity
* :mod:`engine.train.ddp` — several processes under ``torchrun``
* :mod:`engine.train.cli` — ``parley train`` and ``parley eval``
"""
