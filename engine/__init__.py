"""Everything torch: tokenizers, models, sampling, scheduler, context cache, worker, trainer."""
