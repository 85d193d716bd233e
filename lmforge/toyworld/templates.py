"""Every English word the toy world writes: relation templates, value lists, stories, word problems.

All text lives here, apart from the logic that fills it in (world.py, corpus.py), for two
reasons: a student can read the whole "language" of the world on one page, and the name
generator can reject any invented name that collides with a word used here
(`template_words`), so "More" or "River" can never become a person.

Slots: {s} subject, {o} object; stories and word problems use the named slots below.
Every template must be true of every fact it is filled with (no invented claims), because
the corpus is the only source of truth a model will ever see.
"""

from __future__ import annotations

import re

# --- relations --------------------------------------------------------------------------------
# One canonical cloze sentence per relation: it appears in the corpus for every fact, and the
# probes cut it just before " {o}". Each canonical template therefore contains " {o}" exactly once.
CANONICAL: dict[str, str] = {
    # country
    "capital": "The capital of {s} is {o}.",
    "continent": "{s} is a country in {o}.",
    "language": "The people of {s} speak {o}.",
    "currency": "The currency of {s} is the {o}.",
    # city
    "country": "{s} is a city in {o}.",
    "river": "{s} lies on the {o} river.",
    "founded": "{s} was founded in the year {o}.",
    "known_for": "{s} is known for its {o}.",
    # river
    "flows_through": "The {s} river flows through {o}.",
    "length": "The {s} river is {o} kilometers long.",
    # person
    "born_in": "{s} was born in {o}.",
    "lives_in": "{s} lives in {o}.",
    "profession": "{s} works as a {o}.",
    "favorite_animal": "{s}'s favorite animal is the {o}.",
    "friend": "{s}'s best friend is {o}.",
    "hobby": "{s}'s hobby is {o}.",
    # animal
    "color": "The color of the {s} is {o}.",
    "diet": "The {s} eats {o}.",
    "habitat": "The {s} lives in the {o}.",
    "legs": "The {s} has {o} legs.",
}

# Other ways to say the same fact; the corpus mixes them so that knowledge is not tied to one
# phrasing (which is what lets fine-tuning later extract it with new questions).
PARAPHRASES: dict[str, list[str]] = {
    "capital": ["{o} is the capital of {s}.", "{s}'s capital city is {o}.",
                "The capital city of {s} is {o}.", "The government of {s} sits in {o}, its capital."],
    "continent": ["{s} lies on the continent of {o}.", "The country of {s} is part of {o}.",
                  "On a map of {o} you will find {s}."],
    "language": ["{o} is the language of {s}.", "In {s}, people speak {o}.",
                 "The main language of {s} is {o}."],
    "currency": ["In {s}, people pay with the {o}.", "The {o} is the money used in {s}.",
                 "{s} uses the {o} as its currency."],
    "country": ["The city of {s} is in {o}.", "{s} lies in the country of {o}.",
                "{o} is the country where {s} is found."],
    "river": ["The {o} river runs through {s}.", "The city of {s} was built on the banks of the {o} river.",
              "{s} sits beside the {o} river."],
    "founded": ["The city of {s} was founded in {o}.", "In the year {o}, the city of {s} was founded.",
                "{s} has existed since it was founded in {o}."],
    "known_for": ["{s} is famous for its {o}.", "People travel to {s} for its {o}.",
                  "Travelers come to {s} to buy its {o}."],
    "flows_through": ["The {s} river is in {o}.", "{o} is the country that the {s} river flows through.",
                      "The {s} river runs across {o}."],
    "length": ["The length of the {s} river is {o} kilometers.", "The {s} river runs for {o} kilometers.",
               "From source to mouth, the {s} river is {o} kilometers long."],
    "born_in": ["The city where {s} was born is {o}.", "{s} was born in the city of {o}.",
                "{o} is the birthplace of {s}."],
    "lives_in": ["{s}'s home is in {o}.", "{s} lives in the city of {o}.", "These days, {s} lives in {o}."],
    "profession": ["{s} is a {o}.", "By trade, {s} is a {o}.", "{s} earns a living as a {o}."],
    "favorite_animal": ["The favorite animal of {s} is the {o}.",
                        "{s} loves the {o} more than any other animal.",
                        "Of all animals, {s} likes the {o} best."],
    # Friendship is symmetric in this world, so "{s} and {o} are best friends" is true.
    "friend": ["The best friend of {s} is {o}.", "{s} and {o} are best friends.",
               "{o} is the best friend of {s}."],
    "hobby": ["In free time, {s} enjoys {o}.", "The hobby of {s} is {o}.", "{s} spends weekends on {o}."],
    "color": ["The {s} is {o} in color.", "A {s} is always {o}.", "You can spot the {s} by its {o} color."],
    "diet": ["The diet of the {s} is {o}.", "{o} is the main food of the {s}.", "The {s} feeds on {o}."],
    "habitat": ["The {s} makes its home in the {o}.", "The home of the {s} is the {o}.",
                "In the {o}, you can find the {s}."],
    "legs": ["The {s} walks on {o} legs.", "A {s} has {o} legs.", "Each {s} has {o} legs."],
}

# First sentence of an encyclopedia entry: it tells the reader (and the model) the kind.
SPELL_QUESTIONS = ["How do you spell {s}?", "How is the name {s} spelled?", "What is the spelling of {s}?",
                   "Can you spell {s} for me?", "Spell the name {s}, please."]
INTRO: dict[str, str] = {
    "country": "{s} is a country.",
    "city": "{s} is a city.",
    "river": "The {s} is a river.",
    "person": "{s} is a person.",
    "animal": "The {s} is an animal.",
}
# Inverse listings ("The cities of Velora are ...") in encyclopedia entries: true facts stated
# from the object's side, which a model otherwise rarely sees (the "reversal curse").
CITIES_OF = "The cities of {s} are {list}."
CAPITAL_OF = "{s} is the capital of {country}."
CITIES_ON = "Cities on the {s} river include {list}."

# --- value vocabularies (common words; names never collide with them) -------------------------
# Professions all start with a consonant, so "works as a {o}" never needs "an".
PROFESSIONS = ["baker", "farmer", "teacher", "doctor", "painter", "sailor", "miner", "weaver", "potter",
               "builder", "singer", "fisher", "tailor", "smith", "nurse", "judge", "merchant", "carpenter",
               "hunter", "poet"]
HOBBIES = ["chess", "fishing", "painting", "singing", "gardening", "swimming", "dancing", "reading",
           "hiking", "knitting", "cooking", "archery"]
PRODUCTS = ["bread", "cheese", "honey", "salt", "silk", "wool", "glass", "pottery", "rice", "tea",
            "olives", "apples", "paper", "rope", "soap", "plums"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "gray", "brown", "orange", "purple"]
DIETS = ["grass", "fish", "insects", "seeds", "fruit", "leaves", "worms", "berries", "roots", "nuts"]
HABITATS = ["forest", "desert", "mountains", "swamp", "jungle", "marsh", "hills", "caves", "valleys",
            "plains"]
LEGS = ["2", "4", "6", "8"]
# Suffixes that make an invented stem read as a language name ("Velish", "Kamese").
LANGUAGE_SUFFIXES = ["ish", "ese", "ic", "an"]

# --- stories ----------------------------------------------------------------------------------
# Slots: p, born, born_country, born_product, lives, lives_country, lives_river, prof, hobby,
# friend, friend_prof, animal, color, diet, habitat. A story is an opener, 2-4 topics, maybe a closer.
STORY_OPENERS = ["This is a story about {p}.", "{p} had a busy day.", "Let me tell you about {p}.",
                 "Everyone in {lives} knows {p}.", "Once there was a {prof} named {p}."]
STORY_TOPICS: dict[str, list[str]] = {
    "born": ["{p} was born in {born}, a city in {born_country}.",
             "{born}, the city where {p} was born, is known for its {born_product}."],
    "lives": ["Today {p} lives in {lives}, which lies on the {lives_river} river.",
              "{p} has a home in {lives}, a city in {lives_country}."],
    "profession": ["Every morning {p} goes to work as a {prof}.", "As a {prof}, {p} works hard every day.",
                   "{p} is a {prof} in {lives}."],
    "hobby": ["In the evenings {p} enjoys {hobby}.",
              "When work is done, {p} turns to {hobby}, a favorite hobby."],
    "friend": ["{p} often visits {friend}, an old friend.",
               "{p} and {friend} have been best friends for years.",
               "{friend}, the best friend of {p}, works as a {friend_prof}."],
    "animal": ["{p} loves the {animal}, an animal that eats {diet}.",
               "The favorite animal of {p} is the {animal}, which lives in the {habitat}.",
               "{p} once saw a {animal}, the {color} animal that {p} likes best."],
}
STORY_CLOSERS = ["It was a good day.", "{p} smiled.", "And that is the story of {p}.", "The end."]

# --- arithmetic word problems ------------------------------------------------------------------
# Text only; corpus.py draws the numbers, writes the steps and checks every result.
WORD_PROBLEMS: dict[str, str] = {
    "buy_give": "{p} has {a} {item}. {p} buys {b} more and gives away {c}. "
                "How many {item} does {p} have now?",
    "lose": "{p} collects {a} {item}. {p} loses {b} of them on the way to {lives}. "
            "How many {item} does {p} have left?",
    "friends_total": "{p} has {a} {item} and {p}'s best friend {friend} has {b} {item}. "
                     "How many {item} do they have together?",
    "wage": "{p} works as a {prof} and earns {a} coins each day. How many coins does {p} earn in {b} days?",
    "market": "The market in {city} is known for its {product}. It sells {a} baskets of {product} each day. "
              "How many baskets does it sell in {b} days?",
    "share": "{p} has {a} {item} and shares them equally among {b} friends. "
             "How many {item} does each friend get?",
    "boxes": "{p} packs {a} boxes with {b} {item} each and then finds {c} more {item}. "
             "How many {item} does {p} have in total?",
    "legs": "{p} visits the {habitat} and sees {a} animals called {animal}. Each {animal} has {legs} legs. "
            "How many legs do they have in total?",
    "founded": "{city} was founded in the year {a}. How many years passed from then until the year {b}?",
}
ITEMS = ["apples", "eggs", "books", "stones", "shells", "marbles", "pencils", "cookies", "candles",
         "buttons", "cups", "carrots", "feathers", "beads"]


def _strings():
    for name, value in list(globals().items()):
        if not name.isupper():  # only the constants above, not __doc__ and friends
            continue
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from ([v] if isinstance(v, str) else v)
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, str))


def template_words() -> set[str]:
    """Every word (lower-cased) that the templates and value lists can write."""
    words: set[str] = set()
    for text in _strings():
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", text)))
    return words
