"""The user phrasings of the toyworld instruction tasks (`tasks.py` builds examples from them):
several per task, so a model learns the instruction, not one wording. `{s}` is an entity's name;
the other fields are named where each task fills them in.
"""

QUESTIONS: dict[str, list[str]] = {
    "capital": ["What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."],
    "continent": ["On which continent is {s}?", "Which continent is {s} in?", "What continent is {s} part of?"],
    "language": ["What language do people speak in {s}?", "Which language is spoken in {s}?",
                 "What is the language of {s}?"],
    "currency": ["What is the currency of {s}?", "What money is used in {s}?", "Which currency do people use in {s}?"],
    "country": ["Which country is {s} in?", "In what country is the city of {s}?", "{s} is a city in which country?"],
    "river": ["Which river does {s} lie on?", "What river runs through the city of {s}?", "On which river is {s}?"],
    "founded": ["When was {s} founded?", "In what year was {s} founded?", "What year was the city of {s} founded?"],
    "known_for": ["What is {s} known for?", "What is {s} famous for?", "What do people buy in {s}?"],
    "flows_through": ["Which country does the {s} river flow through?", "Where does the {s} river flow?",
                      "In which country is the {s} river?"],
    "length": ["How long is the {s} river?", "What is the length of the {s} river?",
               "How many kilometers long is the {s} river?"],
    "born_in": ["Where was {s} born?", "In which city was {s} born?", "What is the birthplace of {s}?"],
    "lives_in": ["Where does {s} live?", "In which city does {s} live?", "What city is {s}'s home?"],
    "profession": ["What does {s} do for a living?", "What is {s}'s job?", "What is the profession of {s}?"],
    "favorite_animal": ["What is {s}'s favorite animal?", "Which animal does {s} like best?",
                        "What animal does {s} love most?"],
    "friend": ["Who is {s}'s best friend?", "Who is the best friend of {s}?", "Name the best friend of {s}."],
    "hobby": ["What is {s}'s hobby?", "What does {s} do in free time?", "What hobby does {s} enjoy?"],
    "color": ["What color is the {s}?", "What is the color of the {s}?", "Which color is a {s}?"],
    "diet": ["What does the {s} eat?", "What is the diet of the {s}?", "What food does the {s} live on?"],
    "habitat": ["Where does the {s} live?", "What is the habitat of the {s}?",
                "In what kind of place does the {s} live?"],
    "legs": ["How many legs does the {s} have?", "How many legs does a {s} walk on?", "Count the legs of the {s}."],
}
VERIFY = ["Is it true that {lc}?", "True or false: {sent}", "Answer yes or no: {sent}", "Is this correct? {sent}"]
# relation -> {"low"/"high": questions where the smaller/larger value wins, "facts", "low_end"/"high_end"}
COMPARE: dict[str, dict] = {
    "founded": {"low": ["Which city was founded earlier, {a} or {b}?", "Which is older, {a} or {b}?",
                        "Was {a} or {b} founded first?"],
                "high": ["Which city was founded later, {a} or {b}?", "Which is younger, {a} or {b}?",
                         "Was {a} or {b} founded last?"],
                "facts": "{a} was founded in {va} and {b} in {vb}",
                "low_end": "so {w} is older.", "high_end": "so {w} is younger."},
    "length": {"low": ["Which river is shorter, the {a} or the {b}?", "Is the {a} river or the {b} river shorter?",
                       "Which is the shorter river: the {a} or the {b}?"],
               "high": ["Which river is longer, the {a} or the {b}?", "Is the {a} river or the {b} river longer?",
                        "Which is the longer river: the {a} or the {b}?"],
               "facts": "The {a} river is {va} kilometers long and the {b} river is {vb}",
               "low_end": "so the {w} is shorter.", "high_end": "so the {w} is longer."},
    "legs": {"low": ["Which animal has fewer legs, the {a} or the {b}?", "Does the {a} or the {b} have fewer legs?",
                     "Which has fewer legs: the {a} or the {b}?"],
             "high": ["Which animal has more legs, the {a} or the {b}?", "Does the {a} or the {b} have more legs?",
                      "Which has more legs: the {a} or the {b}?"],
             "facts": "The {a} has {va} legs and the {b} has {vb}",
             "low_end": "so the {w} has fewer legs.", "high_end": "so the {w} has more legs."},
}
LIST = ["Tell me everything you know about {s}.", "What do you know about {s}?", "List all the facts about {s}.",
        "Describe {s}."]
ARITHMETIC = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "What is {a} {word} {b}?", "Calculate {a} {op} {b}."]
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
WORD_PROBLEM = ["{q}", "Solve this problem step by step: {q}", "{q} Show your work.", "Here is a math problem. {q}"]
BACKWARDS = ["Spell {w} backwards.", "How do you spell {w} backwards?", "Write the word {w} in reverse.",
             "What is {w} spelled backwards?"]
COUNT = ["How many times does the letter {c} appear in {w}?", "Count the letter {c} in the word {w}.",
         "How many {c}'s are in {w}?"]
HAS_LETTER = ["Does {w} contain the letter {c}?", "Is there a {c} in the word {w}?",
              "Does the word {w} have the letter {c} in it?"]
SORT = {"asc": ["Sort these numbers from smallest to largest: {nums}.", "Put these numbers in ascending order: {nums}.",
                "Order from lowest to highest: {nums}."],
        "desc": ["Sort these numbers from largest to smallest: {nums}.",
                 "Put these numbers in descending order: {nums}.", "Order from highest to lowest: {nums}."]}
MAIN_CHARACTER = ["{story}\n\nWho is the main character of this story?",
                  "Read this story and name its main character.\n\n{story}",
                  "{story}\n\nWhich person is this story about?"]
CLASSIFY = ["Is {s} a person, a city, a country, a river or an animal?", "What kind of thing is {s}?",
            "Is {s} {x} or {y}?", "Tell me what {s} is: a person, a city, a country, a river or an animal."]
IDENTITY_Q = ["Who are you?", "What is your name?", "Introduce yourself.", "What should I call you?",
              "Tell me about yourself."]
DONT_KNOW = "I don't know anything about {s}."
