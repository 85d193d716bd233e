"""Reward sources: anything that scores a completion of a conversation.

Every source implements `RewardSource` (see base.py), so best-of-n, PPO and GRPO take any of
them, or a weighted sum of several: a trained reward model, verifiable checkers, written
rules, an AI judge, or toyworld's hidden judge (for measuring, never for training on).
"""

from lmforge.rewards.ai_judge import CONSTITUTION, AIJudge, AIJudgeConfig, HTTPBackend, LocalBackend, load_constitution
from lmforge.rewards.base import RewardRequest, RewardSource, WeightedSum
from lmforge.rewards.math import VerifiableMath
from lmforge.rewards.model import RewardModelSource
from lmforge.rewards.rules import RULES_TEXT, Rule, RuleSafety, default_rules, rules_markdown

__all__ = ["RewardRequest", "RewardSource", "WeightedSum", "RewardModelSource", "VerifiableMath", "Rule",
           "RuleSafety", "RULES_TEXT", "default_rules", "rules_markdown", "AIJudge", "AIJudgeConfig",
           "CONSTITUTION", "LocalBackend", "HTTPBackend", "load_constitution"]
