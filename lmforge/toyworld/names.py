"""Pronounceable invented names built from syllables, unique and seeded.

Why invented names: a model that already "knows" Paris cannot show what pretraining
taught it. Every name in the toy world is new, so every fact about it must be learned
from the corpus.

Design choices:
- syllables are consonant-vowel with an optional soft coda (Ve-lo-ra, Kam-du, Ti-ros-sa):
  easy to read aloud, and a byte-level BPE trained on the corpus turns each name into
  a few tokens;
- no name is a prefix of another ("Velo" and "Velora" never coexist), so a completion
  that starts with one name can never be a valid start of a different one, and
  first-token scoring stays unambiguous;
- candidates that are English words (a small blocklist plus whatever the caller adds,
  e.g. every word in the corpus templates) are rejected, so "River" or "Baker" can
  never be a person;
- nonexistent names (for "I don't know" questions) come from the same distribution as
  real ones, so a model cannot tell them apart by their look.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

ONSETS = "bdfgklmnprstvz"
VOWELS = "aaeiioou"  # a, i and o twice: they read more naturally in invented words
FINAL_VOWELS = "aaiioou"  # no final "e": it would spell English words (lone, mile, tune, sure, more)
# A coda closes a syllable (Kam-du). At most one inside a name, to keep names short and easy.
MID_CODAS = ("",) * 7 + ("n", "r", "l", "m", "s")
END_CODAS = ("",) * 6 + ("n", "r", "l")
# Consonant pairs (coda + next onset) that are hard to say.
_BAD_CLUSTERS = {"nm", "mn", "lr", "rl", "nr", "ml", "ln", "sz", "zs", "mr", "nl", "sr"}

# English words (and well-known place names) that the syllable rules above can spell. Not a
# dictionary: the common ones, so a reader never meets a person called "Lemon". The world
# generator also blocks every word of its templates and value lists.
COMMON_WORDS = frozenset("""
    bali banana bandana baron basil began benin berlin beta bingo bison bolero bongo boston
    dakota dana data demo demon dental devil dilemma dina diva dodo donor dora fargo fatal favor
    federal felon feta final formal gabon gala gamma gelato general gina gorilla gumbo guru kara
    karma kilo kimono kira lama lana lara latin lava lemon lemur lentil lesson liberal libido
    lido lima limbo limo lingo login logo lola london lulu lunar mali malta mama mambo mango
    manor marina mason medal melon memo mental menu meta metal mika milan mineral mini minor
    mira modal modena molar mora moral motor mural nana natal naval nepal nevada nika nina nodal
    nora normal nova pagan pagoda palermo panama panda papa pasta pedal penal person peru pesto
    petal pisa pistol polar polenta polo potato puma pupil radar razor renal reno rental resin
    rigor rita rival robin roma roman rosa rosin rotor rumba rural sala salami salon salsa samba
    sandal sara satin sedan selma sermon silo soda sofa solar solo sonar sonata sudan sultan
    summon sumo tabu talon tampa tango tara tempo tenor tidal tina titan tobago tofu toga togo
    tomato tonal tonga tornado toronto torpedo torso total tuba tulsa tumor tuna turbo tutor
    tutu valor vandal vanilla vapor vegan venal vendor vera veranda verona vigor villa visor
    vital zero zeta zonal zora
    """.split())


def raw_name(rng: random.Random, n_syllables: int) -> str:
    """One candidate name of `n_syllables` syllables, lower case, not yet checked."""
    parts = []
    has_coda = False
    for i in range(n_syllables):
        final = i == n_syllables - 1
        onset = rng.choice(ONSETS)
        if parts and parts[-1][-1] + onset in _BAD_CLUSTERS:
            parts[-1] = parts[-1][:-1]  # drop the coda rather than resample: keeps the stream simple
        vowel = rng.choice(FINAL_VOWELS if final and n_syllables > 1 else VOWELS)
        coda = rng.choice(END_CODAS if final else MID_CODAS)
        if not final and has_coda:
            coda = ""
        has_coda = has_coda or bool(coda)
        parts.append(onset + vowel + coda)
    return "".join(parts)


class NameGenerator:
    """Hands out names that are unique, prefix-free and not in the blocklist.

    The generator remembers every name it (or the caller, via `reserve`) has used, so
    all names of one world come from one generator.
    """

    def __init__(self, rng: random.Random, blocklist: Iterable[str] = (), taken: Iterable[str] = ()):
        self.rng = rng
        self.blocklist = {w.lower() for w in blocklist} | COMMON_WORDS
        self._names: set[str] = set()      # lower-cased names in use
        self._prefixes: set[str] = set()   # every proper prefix of a name in use
        for name in taken:
            self.reserve(name)

    def is_free(self, name: str) -> bool:
        """True if `name` is not a word, not in use, and not a prefix of (or prefixed by) a name in use."""
        low = name.lower()
        if low in self.blocklist or low in self._names or low in self._prefixes:
            return False
        return not any(low[:i] in self._names for i in range(1, len(low)))

    def reserve(self, name: str) -> None:
        low = name.lower()
        self._names.add(low)
        self._prefixes.update(low[:i] for i in range(1, len(low)))

    def new(self, min_syllables: int = 2, max_syllables: int = 3, suffix: str = "",
            capitalize: bool = True, max_tries: int = 10_000) -> str:
        """A fresh name; `suffix` (e.g. "ish" for a language) is appended to the stem."""
        for _ in range(max_tries):
            stem = raw_name(self.rng, self.rng.randint(min_syllables, max_syllables))
            if suffix and stem[-1] in "aeiou" and suffix[0] in "aeiou":
                stem = stem[:-1]  # "Velo" + "ish" -> "Velish", not "Veloish"
            name = stem + suffix
            if len(name) >= 4 and self.is_free(name):
                self.reserve(name)
                return name.capitalize() if capitalize else name
        raise RuntimeError(f"could not find a free name after {max_tries} tries; "
                           f"{len(self._names)} names are in use")


def nonexistent_names(world_or_names, n: int, seed: int = 0) -> list[str]:
    """`n` names that are guaranteed not to exist in a world, for "I don't know" probes.

    Accepts a `World` (its entity names, invented value words and template words count as
    taken, see `World.reserved_words`) or any iterable of names. The names look exactly like
    real ones and are also not a prefix of (or prefixed by) any existing name, so a model
    cannot guess its way to a real entity.
    """
    if hasattr(world_or_names, "reserved_words"):
        taken = world_or_names.reserved_words()
        seed = seed * 1_000_003 + world_or_names.seed  # depend on the world too
    else:
        taken = set(world_or_names)
    # A separate stream from the world's own names (which use f"names:{seed}").
    gen = NameGenerator(random.Random(f"nonexistent:{seed}"), taken=taken)
    return [gen.new() for _ in range(n)]
