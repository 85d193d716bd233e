"""Typed configuration: dataclasses, YAML recipes, dotted command-line overrides.

Each component owns its dataclass (ModelConfig next to the model, TrainConfig next to
the trainer, ...); `RunConfig` composes them. Loading is strict: an unknown key, a
wrong type or a missing file is a one-line `LmforgeError` naming the key or file,
with the closest valid key for a misspelling.

    cfg = load_config("recipes/demo.yaml", ["train.lr=3e-4", "model.n_layer=6"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import FieldError, LmforgeError, check_fields, non_negative, positive


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp, key: str, source: str):
    """Check/convert one value against a type annotation; raise a one-line error if impossible."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except LmforgeError:
                pass
        raise LmforgeError(f"{source}{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise LmforgeError(f"{source}{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, f"{key}.", source)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and origin is list:  # "a,b" on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise LmforgeError(f"{source}{key}: expected a list, got {value!r}")
        out = [_convert(v, item_tp, f"{key}.{i}", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LmforgeError(f"{source}{key}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LmforgeError(f"{source}{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LmforgeError(f"{source}{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise LmforgeError(f"{source}{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise LmforgeError(f"{source}{key}: expected a string, got {value!r}")
    return value


def _unknown_key(cls, key: str, prefix: str, source: str) -> LmforgeError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
    return LmforgeError(f"{source}unknown key '{prefix}{key}'{hint}")


def build(cls, raw: dict, prefix: str = "", source: str = ""):
    """Build dataclass `cls` from a plain dict, strictly."""
    if raw is None:
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(cls, str(key), prefix, source)
        f = fields[key]
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) \
                and f.default_factory not in (dataclasses.MISSING, hints[key]):
            # a partial section keeps the field's own defaults when they differ from the class's
            # (`rm.train.steps=50` keeps the reward model's lr and warmup, not TrainConfig's)
            value = _merge(dataclasses.asdict(f.default_factory()), value)
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}", source)
    missing = [f.name for f in fields.values() if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:  # cls(**kwargs) would raise a TypeError that names neither the section nor the file
        raise LmforgeError(f"{source}{prefix}{missing[0]}: missing (a required key of {cls.__name__})")
    try:
        return cls(**kwargs)
    except FieldError as e:  # a bad value: named with this section's path (sft.train.steps)
        raise LmforgeError(f"{source}{prefix}{e.field}: {e.what}") from None
    except LmforgeError as e:
        raise LmforgeError(f"{source}{e}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _yaml_value(text: str, key: str, source: str):
    """An override's value as YAML (`3e-4`, `true`, `[a, b]`, `{path: x.jsonl}`); '' stays ''."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LmforgeError(f"{source}{key}: invalid YAML value {text!r} ({getattr(e, 'problem', None) or e})") from None


def _set_dotted(raw: dict, cls, dotted: str, value_text: str, source: str) -> None:
    """Apply `a.b.c=value` to the raw dict, checking each key against the dataclass tree."""
    parts = dotted.split(".")
    node, tp, prefix = raw, cls, ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise _unknown_key(tp, part, prefix, source)
            tp = hints[part]
            if last:
                node[part] = _yaml_value(value_text, dotted, source)
                return
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {} if dataclasses.is_dataclass(tp) else (node.get(part) or [])
            node = node[part]
        elif typing.get_origin(tp) is list:
            if not part.isdigit() or not isinstance(node, list) or int(part) >= len(node):
                raise LmforgeError(f"{source}{prefix.rstrip('.')}: no list item {part!r} to override")
            tp = typing.get_args(tp)[0]
            if last:
                node[int(part)] = _yaml_value(value_text, dotted, source)
                return
            node = node[int(part)]
        else:
            raise LmforgeError(f"{source}{prefix.rstrip('.')} is not a section; cannot set '{dotted}'")
        prefix += part + "."


def _read_recipe(p: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's mapping. `extends: other.yaml` (a path relative to this file) starts from that
    recipe: sections merge key by key, and what this file sets wins (a list is replaced whole)."""
    if not p.is_file():
        raise LmforgeError(f"{p}: recipe file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise LmforgeError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{p}: expected a mapping of sections at the top level")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise LmforgeError(f"{p}: extends: expected the path of another recipe, got {base!r}")
    parent = (p.parent / base).resolve()
    if parent in seen or parent == p.resolve():
        raise LmforgeError(f"{p}: extends: {base} extends this recipe back (a cycle)")
    return _merge(_read_recipe(parent, (*seen, p.resolve())), raw)


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Load `cls` from a YAML file (or defaults when path is None), then apply `key=value` overrides."""
    raw: dict = {}
    source = ""
    if path is not None:
        p = Path(path)
        raw = _read_recipe(p)
        source = f"{p}: "
    if not overrides:
        return build(cls, raw, "", source)
    build(cls, copy.deepcopy(raw), "", source)  # the file alone must be valid: its errors name the file
    for ov in overrides:
        if "=" not in ov:
            raise LmforgeError(f"override {ov!r}: expected key=value (e.g. train.lr=3e-4)")
        key, value = ov.split("=", 1)
        _set_dotted(raw, cls, key.strip(), value.strip(), "override: ")
    return build(cls, raw, "", "override: ")


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


# ---- the run configuration: composes every component's config ---------------------------

# Each component owns its config; these imports only compose them.
from lmforge.curate.config import CurateConfig  # noqa: E402
from lmforge.data.sources import SourceConfig  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.sft import SFTConfig  # noqa: E402
from lmforge.stages.bon import BoNConfig  # noqa: E402
from lmforge.stages.dpo import DPOConfig  # noqa: E402
from lmforge.stages.eval_dpo import AlignEvalConfig  # noqa: E402
from lmforge.stages.eval_sft import ChatEvalConfig  # noqa: E402
from lmforge.stages.eval_specialize import SpecializeEvalConfig  # noqa: E402
from lmforge.stages.grpo import GRPOConfig  # noqa: E402
from lmforge.stages.pairs import PairsConfig  # noqa: E402
from lmforge.stages.ppo import PPOConfig  # noqa: E402
from lmforge.stages.rlaif import RLAIFConfig  # noqa: E402
from lmforge.stages.rm import RMConfig  # noqa: E402
from lmforge.stages.specialize import SpecializeConfig  # noqa: E402
from lmforge.tokenizer import TokenizerConfig  # noqa: E402
from lmforge.toyworld import CorpusConfig, WorldConfig  # noqa: E402
from lmforge.train.config import TrainConfig  # noqa: E402


@dataclasses.dataclass
class ToyworldConfig:
    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)


@dataclasses.dataclass
class DataConfig:
    # Pretraining text. Empty: the toyworld corpus written by the `toyworld` stage.
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    val_fraction: float = 0.05
    # Documents packed into one training row attend only to themselves (as Llama 3 trains), not to
    # the unrelated documents before them. On a corpus of short notes about different entities,
    # attending across them teaches a model that names in its context are not the ones to repeat.
    doc_mask: bool = False

    def __post_init__(self):
        check_fields(self, ["val_fraction"], lambda v: 0 < v < 1,
                     "a number > 0 and < 1 (pretraining measures its validation loss on that share)")


@dataclasses.dataclass
class EvalConfig:
    max_new_tokens: int = 8         # greedy tokens generated per cloze / arithmetic probe
    cloze_limit: int = 0            # probes per split (0: all)
    arithmetic_probes: int = 200

    def __post_init__(self):
        positive(self, "max_new_tokens", "arithmetic_probes")
        non_negative(self, "cloze_limit")


@dataclasses.dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"           # the run writes into <out_dir>/<name>/<stage>/
    seed: int = 0                   # fixes world, data order, init and sampling
    stages: list[str] = dataclasses.field(default_factory=lambda: ["toyworld", "tokenizer", "pretrain",
                                                                   "eval_base"])
    toyworld: ToyworldConfig = dataclasses.field(default_factory=ToyworldConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    curate: CurateConfig = dataclasses.field(default_factory=CurateConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    eval_sft: ChatEvalConfig = dataclasses.field(default_factory=ChatEvalConfig)
    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    rm: RMConfig = dataclasses.field(default_factory=RMConfig)
    bon: BoNConfig = dataclasses.field(default_factory=BoNConfig)
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    eval_dpo: AlignEvalConfig = dataclasses.field(default_factory=AlignEvalConfig)
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    rlaif: RLAIFConfig = dataclasses.field(default_factory=RLAIFConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    specialize: SpecializeConfig = dataclasses.field(default_factory=SpecializeConfig)
    eval_specialize: SpecializeEvalConfig = dataclasses.field(default_factory=SpecializeEvalConfig)

    def __post_init__(self):
        from lmforge.stages import STAGES

        # one plain path component: `name=../..` or an absolute path would point --fresh at other directories
        if not re.fullmatch(r"[\w.+=-]+", self.name) or set(self.name) == {"."}:
            raise FieldError("name", f"expected a run name of letters, digits and . _ - + = (the run writes into "
                                     f"out_dir/name/), got {self.name!r}")

        for s in self.stages:
            if s not in STAGES:
                close = difflib.get_close_matches(s, list(STAGES), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(STAGES)})"
                raise LmforgeError(f"stages: unknown stage '{s}'{hint}")


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return load_config(RunConfig, path, overrides)
