"""Reward sources: anything that scores a completion of a conversation.

Every source implements `RewardSource` (see base.py), so best-of-n, PPO and GRPO take any of
them, or a weighted sum of several: a trained reward model, verifiable checkers, written
rules, an AI judge, or toyworld's hidden judge (for measuring, never for training on).
"""

from lmforge.rewards.base import RewardRequest, RewardSource, WeightedSum
from lmforge.rewards.model import RewardModelSource

__all__ = ["RewardRequest", "RewardSource", "WeightedSum", "RewardModelSource"]
