"""The trainer service, ``parley trainer``: the learning loop's one process.

It archives the conversation log (:mod:`bot.trainer.ingest`), applies consent and feedback
requests to the archive, and runs retrain jobs that arrive as requests on
:data:`bot.keys.TRAINER_REQUESTS` (:mod:`bot.trainer.jobs`), each in a child process, so
adapters, engines and the trainer can live on different hosts that share one Redis.
Adapters, the dashboard and the CLI talk to it through :class:`bot.trainer.client.TrainerClient`.
No torch here: the job's child process (``engine.train.retrain``) is where training happens.
"""
