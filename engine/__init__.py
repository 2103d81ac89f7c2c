"""Everything torch: tokenizers, models, checkpoints, training (``engine.train``) and serving
(``engine.serve``, started by ``engine.service``). Training and serving share the model
definitions, the tokenizer and the checkpoint loader."""
