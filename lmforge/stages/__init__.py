"""The pipeline's stages, in the order a recipe usually lists them.

Adding a stage: write `lmforge/stages/<name>.py` with a `STAGE = Stage(...)`, and add it here.
"""

from lmforge.stages import eval_base, eval_sft, pretrain, sft, tokenizer, toyworld

STAGES = {s.name: s for s in (toyworld.STAGE, tokenizer.STAGE, pretrain.STAGE, eval_base.STAGE, sft.STAGE,
                              eval_sft.STAGE)}
