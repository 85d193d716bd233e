"""The toy world: a small invented world, its pretraining corpus and its probes, all from a seed.

Why: to see what each training stage does, we need a model that starts knowing nothing and
a world whose every fact we know. `generate_world(seed)` invents one; nothing in it exists
outside this module, so whatever the model knows about it, it learned from our corpus.

The world (defaults, `WorldConfig`): 346 entities and 1,684 facts.
- 24 countries: capital (one of its cities), continent (4 invented), language (8 invented,
  shared), currency (one invented word per country);
- 72 cities, 3 per country: country, river (one that flows through that country), founded
  (a year), known_for (a product: bread, silk, honey...);
- 30 rivers: flows_through (a country), length (kilometers);
- 180 people: born_in, lives_in (cities), profession (20 words), favorite_animal (an animal),
  friend (a person; friendship is mutual), hobby (12 words);
- 40 animals (invented species): color, diet, habitat, legs.
Names are invented, 2-3 syllables ("Velora", "Kamdu"), unique, never a prefix of another name
and never an English word the templates use. `nonexistent_names(world, n)` makes names that
look the same but are not in the world, for "I don't know" questions.

The split: each entity is "train" or "heldout", half of each kind (seeded). A fact belongs
to its subject's split. Later stages may build instruction data from train facts only;
heldout facts appear only in pretraining text, so questions about them measure whether
fine-tuning taught the model to retrieve what pretraining stored.

The corpus (`pretraining_corpus`, defaults `CorpusConfig`): ~2,900 documents, ~600k
characters (~180k tokens with a 4k-entry BPE), shuffled:
- an encyclopedia entry per entity (facts in random order and phrasing);
- each fact restated 3 more times in "facts" paragraphs, first in its canonical sentence
  (e.g. "The capital of Velora is Kamdu.", the sentence probes cut), then in paraphrases;
- 1,080 short stories about people; 400 documents of arithmetic lines ("37 + 48 = 85");
- 720 word problems about world entities, worked step by step, ending "#### <answer>".

The probes: `cloze_probes(world, split)` ("The capital of Velora is" -> "Kamdu"),
`arithmetic_probes(seed, n)` ("37 + 48 =" -> "85", with operand pairs never in the corpus),
and `score_completion(probe, completion)`.
"""

from lmforge.toyworld.corpus import (
    CorpusConfig,
    Document,
    corpus_documents,
    corpus_stats,
    pretraining_corpus,
    word_problem,
)
from lmforge.toyworld.names import nonexistent_names
from lmforge.toyworld.probes import Probe, arithmetic_probes, cloze_probes, cloze_prompt, score_completion
from lmforge.toyworld.rules import REFUSAL, is_refusal
from lmforge.toyworld.tasks import HELDOUT_TASKS, IDENTITY, TASKS, Example, Task, eval_examples, score, sft_examples
from lmforge.toyworld.world import (
    KINDS,
    RELATIONS,
    Entity,
    Fact,
    Relation,
    World,
    WorldConfig,
    canonical_sentence,
    generate_world,
)

__all__ = [
    "KINDS", "RELATIONS", "CorpusConfig", "Document", "Entity", "Fact", "Probe", "Relation", "World",
    "WorldConfig", "arithmetic_probes", "canonical_sentence", "cloze_probes", "cloze_prompt",
    "corpus_documents", "corpus_stats", "generate_world", "nonexistent_names", "pretraining_corpus",
    "score_completion", "word_problem",
    "HELDOUT_TASKS", "IDENTITY", "REFUSAL", "TASKS", "Example", "Task", "eval_examples", "is_refusal", "score",
    "sft_examples",
]
