"""The pipeline's stages, in the order a recipe usually lists them.

Adding a stage: write `lmforge/stages/<name>.py` with a `STAGE = Stage(...)`, and add it here.
"""

from lmforge.stages import (
    bon,
    curate,
    dpo,
    eval_base,
    eval_dpo,
    eval_sft,
    eval_specialize,
    grpo,
    pairs,
    ppo,
    pretrain,
    rlaif,
    rm,
    sft,
    specialize,
    tokenizer,
    toyworld,
)

STAGES = {s.name: s for s in (toyworld.STAGE, curate.STAGE, tokenizer.STAGE, pretrain.STAGE, eval_base.STAGE,
                              sft.STAGE, eval_sft.STAGE, pairs.STAGE, rm.STAGE, bon.STAGE, dpo.STAGE, eval_dpo.STAGE,
                              grpo.STAGE, specialize.STAGE, eval_specialize.STAGE, rlaif.STAGE, ppo.STAGE,
                              ppo.EVAL_STAGE)}
