"""Overrides that shrink the demo recipe to a tiny end-to-end run (seconds per stage), shared by the
tests that run stages from the command line."""

# pretraining and SFT at toy sizes: what every later stage starts from
BASE = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=400",
        "train.steps=4", "train.micro_batch_size=4", "train.seq_len=64", "train.progress=false",
        "train.tensorboard=false", "train.eval_every=2", "train.eval_batches=1",
        "toyworld.corpus.n_stories=10", "toyworld.corpus.n_arithmetic_docs=5", "toyworld.corpus.n_word_problems=5",
        "sft.n_per_task=4", "sft.val_examples=20", "sft.train.steps=4", "sft.train.micro_batch_size=4",
        "sft.train.progress=false", "sft.train.tensorboard=false"]

# preference pairs and a reward model on them
PAIRS_RM = ["pairs.n_prompts=40", "pairs.samples=3", "pairs.max_new_tokens=12", "pairs.val_fraction=0.3",
            "pairs.temperature=1.0", "pairs.min_margin=0", "pairs.tasks={}", "pairs.all_pairs=true",
            "rm.train.steps=4", "rm.train.micro_batch_size=4", "rm.train.progress=false", "rm.train.tensorboard=false"]

# GRPO from the SFT model: 3 steps of 2 x 4 samples
GRPO = ["grpo.init=sft", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=8",
        "grpo.train.steps=3", "grpo.train.progress=false", "grpo.train.tensorboard=false"]
