"""Losses as pure functions: tensors in, per-example or summed values (plus diagnostics) out.

Reduction across micro-batches and processes is the trainer's job, never the loss's.
"""

from lmforge.losses.ce import IGNORE_INDEX, cross_entropy_sum
from lmforge.losses.preference import (
    PREFERENCE_LOSSES,
    PreferenceLossSpec,
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_mismatched_indices,
    orpo_loss,
    preference_loss,
    simpo_loss,
)
from lmforge.losses.rl import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalty,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)

__all__ = ["IGNORE_INDEX", "PREFERENCE_LOSSES", "PreferenceLossSpec", "bradley_terry_loss", "cross_entropy_sum",
           "dpo_loss", "hinge_loss", "ipo_loss", "kto_loss", "kto_mismatched_indices", "orpo_loss",
           "preference_loss", "simpo_loss",
           "AdaptiveKLController", "FixedKLController", "aggregate", "entropy_from_logits", "gae",
           "group_advantages", "kl_penalty", "policy_loss", "token_rewards", "value_loss", "whiten"]
