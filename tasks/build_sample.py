"""Builds the embedded Natural Instructions sample in `tasks/` (deterministic).

Every task here is synthetic and written for tkx: short inputs, short outputs and
small label sets, so a tiny T5 trained for minutes on a CPU visibly learns, and
test tasks that resemble training tasks (comparisons, analogies, titles,
sentiment, grammar fixes), so the default split's test tasks are reachable.
Three Finnish tasks (`*_fi`) make up the x-lingual track's split.

Run from the repository root:

    python tasks/build_sample.py            # task JSONs + split files
    python tasks/build_sample.py --spm      # ... and retrain tasks/spm/tkx_sample.model

The output does not depend on the machine: a fixed seed per task, the official
field order, and instance ids that are hashes of task name, index and input.
"""
import argparse
import hashlib
import json
import os
import pathlib
import random

TASKS_DIR = pathlib.Path(__file__).resolve().parent
SEED = 20260101
CONTRIBUTORS = ["tkx authors"]
SOURCE = ["tkx_synthetic"]
URL = ["https://github.com/tkx/tkx/blob/main/tasks/build_sample.py"]
LICENSE = ["Apache 2.0"]

# --------------------------------------------------------------------------- word lists
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]
NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kate",
         "Leo", "Maria", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
COUNTRY_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Finland", "Helsinki"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Greece", "Athens"),
    ("Ireland", "Dublin"), ("Hungary", "Budapest"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Russia", "Moscow"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Cuba", "Havana"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Czechia", "Prague"), ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"), ("Morocco", "Rabat"), ("Ghana", "Accra"), ("Nigeria", "Abuja"),
    ("Australia", "Canberra"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("Iceland", "Reykjavik"),
]
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("tall", "short"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("early", "late"),
    ("open", "closed"), ("full", "empty"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
    ("clean", "dirty"), ("high", "low"), ("thick", "thin"), ("wide", "narrow"), ("heavy", "light"),
    ("near", "far"), ("cheap", "expensive"), ("good", "bad"), ("easy", "difficult"), ("first", "last"),
    ("inside", "outside"), ("up", "down"), ("day", "night"), ("win", "lose"), ("buy", "sell"),
    ("push", "pull"), ("start", "finish"), ("true", "false"), ("love", "hate"), ("friend", "enemy"),
    ("north", "south"), ("east", "west"), ("above", "below"), ("before", "after"), ("always", "never"),
    ("brave", "afraid"), ("sharp", "dull"), ("sweet", "sour"), ("deep", "shallow"), ("smooth", "rough"),
    ("safe", "dangerous"), ("polite", "rude"), ("awake", "asleep"), ("arrive", "leave"), ("remember", "forget"),
]
SYNONYMS = [
    ("big", "large"), ("small", "tiny"), ("happy", "glad"), ("sad", "unhappy"), ("fast", "quick"),
    ("smart", "clever"), ("begin", "start"), ("end", "finish"), ("angry", "mad"), ("easy", "simple"),
    ("hard", "difficult"), ("shout", "yell"), ("look", "see"), ("speak", "talk"), ("rich", "wealthy"),
    ("near", "close"), ("gift", "present"), ("road", "street"), ("quiet", "silent"), ("scared", "afraid"),
    ("pretty", "beautiful"), ("cold", "chilly"), ("wet", "damp"), ("fix", "repair"), ("buy", "purchase"),
    ("choose", "pick"), ("help", "assist"), ("idea", "thought"), ("job", "work"), ("sick", "ill"),
    ("shut", "close"), ("wrong", "incorrect"), ("below", "under"), ("story", "tale"), ("rock", "stone"),
    ("house", "home"), ("jump", "leap"), ("car", "automobile"), ("center", "middle"), ("answer", "reply"),
]
DISTRACTORS = ["green", "table", "seven", "window", "river", "yellow", "pencil", "cloud", "banana",
               "chair", "forty", "purple", "garden", "spoon", "winter", "carpet", "bottle", "pepper"]
PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("book", "books"), ("car", "cars"), ("tree", "trees"),
    ("house", "houses"), ("apple", "apples"), ("bird", "birds"), ("chair", "chairs"), ("table", "tables"),
    ("box", "boxes"), ("bus", "buses"), ("dish", "dishes"), ("watch", "watches"), ("glass", "glasses"),
    ("fox", "foxes"), ("church", "churches"), ("brush", "brushes"), ("city", "cities"), ("baby", "babies"),
    ("story", "stories"), ("party", "parties"), ("lady", "ladies"), ("family", "families"), ("day", "days"),
    ("key", "keys"), ("toy", "toys"), ("boy", "boys"), ("leaf", "leaves"), ("knife", "knives"),
    ("wife", "wives"), ("wolf", "wolves"), ("man", "men"), ("woman", "women"), ("child", "children"),
    ("foot", "feet"), ("tooth", "teeth"), ("mouse", "mice"), ("goose", "geese"), ("person", "people"),
    ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("pen", "pens"), ("cup", "cups"),
    ("door", "doors"), ("river", "rivers"), ("horse", "horses"), ("flower", "flowers"), ("song", "songs"),
]
COMPARATIVES = [
    ("big", "bigger"), ("small", "smaller"), ("tall", "taller"), ("short", "shorter"), ("fast", "faster"),
    ("slow", "slower"), ("old", "older"), ("young", "younger"), ("long", "longer"), ("cold", "colder"),
    ("warm", "warmer"), ("hot", "hotter"), ("strong", "stronger"), ("weak", "weaker"), ("high", "higher"),
    ("low", "lower"), ("happy", "happier"), ("easy", "easier"), ("busy", "busier"), ("early", "earlier"),
    ("dark", "darker"), ("bright", "brighter"), ("clean", "cleaner"), ("rich", "richer"), ("poor", "poorer"),
    ("thin", "thinner"), ("wide", "wider"), ("loud", "louder"), ("soft", "softer"), ("sweet", "sweeter"),
]
REVIEW_THINGS = ["The soup", "This phone", "The hotel room", "The pizza", "This jacket", "The service",
                 "The coffee", "This laptop", "The bed", "The staff", "This book", "The cake", "The shoes",
                 "The delivery", "This chair"]
POSITIVE_ADJ = ["great", "excellent", "wonderful", "delicious", "comfortable", "amazing", "perfect", "lovely",
                "fantastic", "friendly"]
NEGATIVE_ADJ = ["terrible", "awful", "broken", "cold and bland", "uncomfortable", "rude", "disappointing",
                "horrible", "dirty", "useless"]
MOVIE_PARTS = ["The acting", "The story", "The ending", "The music", "This film", "The movie", "The plot",
               "The director's work", "The cast", "The script"]
MOVIE_POSITIVE = ["brilliant", "moving", "great", "wonderful", "excellent", "beautiful", "fantastic", "funny"]
MOVIE_NEGATIVE = ["boring", "terrible", "awful", "weak", "dull", "disappointing", "silly", "horrible"]
VERBS_3SG = [("run", "runs"), ("walk", "walks"), ("eat", "eats"), ("sing", "sings"), ("read", "reads"),
             ("play", "plays"), ("swim", "swims"), ("sleep", "sleeps"), ("jump", "jumps"), ("cook", "cooks"),
             ("write", "writes"), ("dance", "dances"), ("drink", "drinks"), ("work", "works")]
SUBJECTS_3SG = ["The dog", "My sister", "The teacher", "The baby", "Our neighbor", "The cat", "My father",
                "The boy", "The girl", "The farmer"]
PLACES = ["in the park", "every morning", "at home", "after school", "near the river", "on Sundays",
          "in the kitchen", "all day"]
TITLE_ACTORS = [("The city council", "City Council"), ("The school board", "School Board"),
                ("The local team", "Local Team"), ("The mayor", "Mayor"), ("The museum", "Museum"),
                ("The library", "Library"), ("The hospital", "Hospital"), ("The company", "Company"),
                ("The government", "Government"), ("The university", "University")]
TITLE_ACTIONS = [("approved", "Approves"), ("opened", "Opens"), ("announced", "Announces"),
                 ("closed", "Closes"), ("built", "Builds"), ("won", "Wins"), ("planned", "Plans"),
                 ("cancelled", "Cancels")]
TITLE_OBJECTS = [("a new park", "New Park"), ("a large bridge", "Large Bridge"), ("a summer festival", "Summer Festival"),
                 ("a music hall", "Music Hall"), ("a bike lane", "Bike Lane"), ("a public pool", "Public Pool"),
                 ("a science center", "Science Center"), ("a food market", "Food Market")]
TITLE_WHEN = ["on Monday", "last week", "this morning", "on Friday", "yesterday", "after a long debate",
              "in the spring", "on Tuesday"]
HEADLINE_EVENTS = [("won the final match", "Wins Final Match"), ("lost the final match", "Loses Final Match"),
                   ("found an old map", "Finds Old Map"), ("raised prices", "Raises Prices"),
                   ("hired new teachers", "Hires New Teachers"), ("sold the old building", "Sells Old Building"),
                   ("started a reading program", "Starts Reading Program"), ("planted many trees", "Plants Many Trees")]
CAUSE_EFFECT = [
    ("It rained all night.", "The streets were wet."), ("Maria forgot her umbrella.", "Maria got wet."),
    ("The boy ate too much candy.", "The boy had a stomach ache."), ("The alarm did not ring.", "Ben was late for work."),
    ("The ice cream sat in the sun.", "The ice cream melted."), ("Kate studied every day.", "Kate passed the exam."),
    ("The glass fell on the floor.", "The glass broke."), ("The power went out.", "The room went dark."),
    ("Leo ran a long race.", "Leo was tired."), ("The plant got no water.", "The plant died."),
    ("The road was icy.", "The car slid off the road."), ("Hugo told a funny joke.", "Everyone laughed."),
    ("The baby was hungry.", "The baby cried."), ("Emma lost her keys.", "Emma could not open the door."),
    ("The wind was strong.", "The tree fell down."), ("Sam did not sleep.", "Sam was sleepy in class."),
    ("The oven was too hot.", "The bread burned."), ("Nick saved his money.", "Nick bought a bike."),
    ("The river flooded.", "The farm was under water."), ("The dog saw a cat.", "The dog barked."),
    ("Tina practiced the piano.", "Tina played well at the concert."), ("The milk was old.", "The milk smelled bad."),
    ("Paul broke his leg.", "Paul used crutches."), ("The shop had a sale.", "Many people came to the shop."),
    ("Iris planted seeds.", "Flowers grew in the garden."), ("The kettle boiled.", "The kettle whistled."),
]
RECORD_JOBS = ["teacher", "doctor", "baker", "pilot", "farmer", "painter", "nurse", "driver", "singer", "chef"]
RECORD_CITIES = ["Rome", "Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Berlin", "Dublin", "Vienna", "Madrid"]
KEYWORD_SENTENCES = [
    ("The {x} was sleeping on the warm sofa.", ["cat", "dog", "baby", "puppy", "kitten"]),
    ("We planted a {x} in the back garden.", ["tree", "rose", "bush", "tulip", "lemon tree"]),
    ("The children played football in the {x}.", ["park", "yard", "street", "field", "school"]),
    ("My grandmother baked a {x} for the party.", ["cake", "pie", "bread", "cookie", "tart"]),
    ("A strong {x} hit the small town last night.", ["storm", "wind", "earthquake", "flood", "fire"]),
    ("He fixed the broken {x} with a hammer.", ["chair", "fence", "table", "door", "shelf"]),
    ("The {x} sang loudly in the morning.", ["bird", "rooster", "choir", "singer", "girl"]),
    ("She wrote a long {x} to her friend.", ["letter", "email", "poem", "note", "story"]),
    ("The old {x} stopped working yesterday.", ["clock", "radio", "car", "phone", "fridge"]),
    ("They watched a {x} at the cinema.", ["film", "movie", "cartoon", "show", "documentary"]),
]
FACT_WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum",
              "melon", "berry", "olive", "onion", "carrot", "tomato", "garlic", "pepper", "radish", "turnip",
              "bread", "butter", "cheese", "cookie", "honey", "jelly", "pasta", "pizza", "salad", "sugar",
              "zebra", "tiger", "horse", "mouse", "eagle", "shark", "whale", "snake", "camel", "koala",
              "piano", "guitar", "violin", "drum", "flute", "train", "plane", "truck", "boat", "bike"]
ARTICLE_NOUNS = ["apple", "egg", "orange", "umbrella", "island", "elephant", "hour", "idea", "owl", "ant",
                 "book", "car", "house", "dog", "ball", "cup", "banana", "tree", "girl", "pen"]
ARTICLE_VERBS = ["saw", "found", "wanted", "drew", "liked", "had", "needed", "painted"]

# Finnish (x-lingual track): written for tkx, not translated from any NI task.
FI_REVIEW_THINGS = ["Keitto", "Puhelin", "Hotellihuone", "Pizza", "Takki", "Palvelu", "Kahvi", "Kannettava",
                    "Sänky", "Henkilökunta", "Kirja", "Kakku", "Kengät", "Toimitus", "Tuoli"]
FI_POSITIVE = ["erinomainen", "upea", "herkullinen", "mukava", "loistava", "täydellinen", "ihana", "ystävällinen"]
FI_NEGATIVE = ["kamala", "huono", "rikki", "epämukava", "töykeä", "likainen", "hyödytön", "surkea"]
FI_MOVIE_PARTS = ["Näyttelijäntyö", "Tarina", "Loppu", "Musiikki", "Tämä elokuva", "Juoni", "Käsikirjoitus",
                  "Ohjaus", "Elokuva", "Kuvaus"]
FI_MOVIE_POSITIVE = ["loistava", "koskettava", "hauska", "upea", "kaunis", "erinomainen"]
FI_MOVIE_NEGATIVE = ["tylsä", "huono", "kamala", "heikko", "pitkästyttävä", "typerä"]
FI_CAPITALS = [
    ("Ranskan", "Pariisi"), ("Saksan", "Berliini"), ("Italian", "Rooma"), ("Espanjan", "Madrid"),
    ("Portugalin", "Lissabon"), ("Suomen", "Helsinki"), ("Ruotsin", "Tukholma"), ("Norjan", "Oslo"),
    ("Tanskan", "Kööpenhamina"), ("Puolan", "Varsova"), ("Itävallan", "Wien"), ("Kreikan", "Ateena"),
    ("Irlannin", "Dublin"), ("Unkarin", "Budapest"), ("Japanin", "Tokio"), ("Kiinan", "Peking"),
    ("Egyptin", "Kairo"), ("Kenian", "Nairobi"), ("Perun", "Lima"), ("Chilen", "Santiago"),
    ("Kanadan", "Ottawa"), ("Venäjän", "Moskova"), ("Turkin", "Ankara"), ("Iranin", "Teheran"),
    ("Thaimaan", "Bangkok"), ("Vietnamin", "Hanoi"), ("Kuuban", "Havanna"), ("Belgian", "Bryssel"),
    ("Alankomaiden", "Amsterdam"), ("Viron", "Tallinna"), ("Latvian", "Riika"), ("Liettuan", "Vilna"),
    ("Tšekin", "Praha"), ("Argentiinan", "Buenos Aires"), ("Kolumbian", "Bogotá"), ("Marokon", "Rabat"),
    ("Ghanan", "Accra"), ("Nigerian", "Abuja"), ("Australian", "Canberra"), ("Etelä-Korean", "Soul"),
    ("Indonesian", "Jakarta"), ("Islannin", "Reykjavik"),
]


def _instance_id(task_number, task_name, index, text):
    digest = hashlib.md5(f"{task_name}|{index}|{text}".encode("utf-8")).hexdigest()
    return f"task{task_number}-{digest}"


# --------------------------------------------------------------------------- instance makers
# Each returns a list of (input, [outputs]); duplicates are removed later.

def sentiment_reviews(rng):
    rows = []
    for thing in REVIEW_THINGS:
        for adj in rng.sample(POSITIVE_ADJ, 2):
            rows.append((f"Review: {thing} was {adj}.", ["positive"]))
        for adj in rng.sample(NEGATIVE_ADJ, 2):
            rows.append((f"Review: {thing} was {adj}.", ["negative"]))
    return rows


def sentiment_movies(rng):
    rows = []
    for part in MOVIE_PARTS:
        for adj in rng.sample(MOVIE_POSITIVE, 2):
            rows.append((f"Movie review: {part} was {adj}.", ["positive"]))
        for adj in rng.sample(MOVIE_NEGATIVE, 2):
            rows.append((f"Movie review: {part} was {adj}.", ["negative"]))
    return rows


def antonyms(rng):
    return [(f"Word: {a}", [b]) for a, b in ANTONYMS]


def arithmetic(rng):
    rows = []
    items = ["apples", "pens", "books", "coins", "cookies", "stickers", "marbles", "cards"]
    for _ in range(60):
        name, item = rng.choice(NAMES), rng.choice(items)
        if rng.random() < 0.5:
            a, b = rng.randint(1, 10), rng.randint(1, 10)
            text = (f"{name} has {NUMBER_WORDS[a]} {item} and gets {NUMBER_WORDS[b]} more. "
                    f"How many {item} does {name} have now?")
            answer = a + b
        else:
            a = rng.randint(2, 20)
            b = rng.randint(1, a)
            text = (f"{name} has {NUMBER_WORDS[a]} {item} and gives away {NUMBER_WORDS[b]}. "
                    f"How many {item} does {name} have now?")
            answer = a - b
        rows.append((text, [NUMBER_WORDS[answer]]))
    return rows


def capitals(rng):
    return [(f"What is the capital of {country}?", [capital]) for country, capital in COUNTRY_CAPITALS]


def reverse_words(rng):
    words = ["the", "cat", "sat", "on", "mat", "red", "ball", "is", "big", "we", "like", "green", "tea",
             "dog", "runs", "home", "sun", "sky", "blue", "my"]
    rows = []
    for _ in range(50):
        sentence = rng.sample(words, rng.randint(3, 5))
        rows.append((f"Sentence: {' '.join(sentence)}", [" ".join(reversed(sentence))]))
    return rows


def uppercase(rng):
    pool = sorted({w for pair in ANTONYMS for w in pair})
    return [(f"Word: {w}", [w.upper()]) for w in rng.sample(pool, 50)]


def plurals(rng):
    return [(f"Singular: {s}", [p]) for s, p in PLURALS]


def sort_letters(rng):
    pool = sorted({w for pair in ANTONYMS + SYNONYMS for w in pair if 3 <= len(w) <= 6})
    return [(f"Word: {w}", ["".join(sorted(w))]) for w in rng.sample(pool, 50)]


def parity(rng):
    numbers = rng.sample(range(0, 200), 50)
    return [(f"Number: {n}", ["even" if n % 2 == 0 else "odd"]) for n in numbers]


def capital_facts(rng):
    rows = []
    for i, (country, capital) in enumerate(COUNTRY_CAPITALS):
        if i % 2 == 0:
            rows.append((f"Claim: {capital} is the capital of {country}.", ["yes"]))
        else:
            other = rng.choice([c for _, c in COUNTRY_CAPITALS if c != capital])
            rows.append((f"Claim: {other} is the capital of {country}.", ["no"]))
    return rows


def synonym_pick(rng):
    rows = []
    for word, synonym in SYNONYMS:
        options = [synonym] + rng.sample(DISTRACTORS, 2)
        rng.shuffle(options)
        rows.append((f"Word: {word}. Options: {', '.join(options)}", [synonym]))
    return rows


def _titles(rng, actors, actions, objects, whens, n):
    rows = []
    for _ in range(n):
        (actor, actor_t), (verb, verb_t), (obj, obj_t) = rng.choice(actors), rng.choice(actions), rng.choice(objects)
        text = f"Sentence: {actor} {verb} {obj} {rng.choice(whens)}."
        rows.append((text, [f"{actor_t} {verb_t} {obj_t}", f"{verb_t} {obj_t}"]))
    return rows


def titles(rng):
    return _titles(rng, TITLE_ACTORS, TITLE_ACTIONS, TITLE_OBJECTS, TITLE_WHEN, 55)


def headlines(rng):
    rows = []
    for _ in range(50):
        actor, actor_t = rng.choice(TITLE_ACTORS)
        event, event_t = rng.choice(HEADLINE_EVENTS)
        rows.append((f"News: {actor} {event} {rng.choice(TITLE_WHEN)}.", [f"{actor_t} {event_t}"]))
    return rows


def _comparison_entailment(rng, pairs, n):
    """pairs: (relation, converse, opposite) e.g. ("taller", "shorter", ...)."""
    rows = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        more, less = rng.choice(pairs)
        hypothesis_kind = i % 4
        if hypothesis_kind == 0:
            hyp, label = f"{b} is {less} than {a}.", "yes"
        elif hypothesis_kind == 1:
            hyp, label = f"{a} is {less} than {b}.", "no"
        elif hypothesis_kind == 2:
            hyp, label = f"{b} is {more} than {a}.", "no"
        else:
            hyp, label = f"{a} is {more} than {b}.", "yes"
        rows.append((f"Premise: {a} is {more} than {b}. Hypothesis: {hyp}", [label]))
    return rows


def size_entailment(rng):
    return _comparison_entailment(rng, [("taller", "shorter"), ("faster", "slower"), ("stronger", "weaker"),
                                        ("richer", "poorer")], 56)


def age_entailment(rng):
    return _comparison_entailment(rng, [("older", "younger"), ("heavier", "lighter"), ("happier", "sadder")], 52)


def comparative_analogies(rng):
    rows = []
    for _ in range(55):
        (a, a2), (b, b2) = rng.sample(COMPARATIVES, 2)
        rows.append((f"{a} : {a2} :: {b} : ?", [b2]))
    return rows


def plural_analogies(rng):
    rows = []
    for _ in range(50):
        (a, a2), (b, b2) = rng.sample(PLURALS, 2)
        rows.append((f"{a} : {a2} :: {b} : ?", [b2]))
    return rows


def agreement_correction(rng):
    rows = []
    for _ in range(55):
        subject, (base, third) = rng.choice(SUBJECTS_3SG), rng.choice(VERBS_3SG)
        place = rng.choice(PLACES)
        rows.append((f"{subject} {base} {place}.", [f"{subject} {third} {place}."]))
    return rows


def article_correction(rng):
    rows = []
    for _ in range(50):
        name, verb, noun = rng.choice(NAMES), rng.choice(ARTICLE_VERBS), rng.choice(ARTICLE_NOUNS)
        right = "an" if noun[0] in "aeiou" or noun == "hour" else "a"
        wrong = "a" if right == "an" else "an"
        rows.append((f"{name} {verb} {wrong} {noun}.", [f"{name} {verb} {right} {noun}."]))
    return rows


def records(rng):
    rows = []
    for _ in range(55):
        name, job, city = rng.choice(NAMES), rng.choice(RECORD_JOBS), rng.choice(RECORD_CITIES)
        rows.append((f"name: {name} | job: {job} | city: {city}",
                     [f"{name} is a {job} from {city}.", f"{name} is a {job} who lives in {city}."]))
    return rows


def cause_effect(rng):
    rows = []
    for i, (cause, effect) in enumerate(CAUSE_EFFECT):
        rows.append((f"Sentence 1: {cause} Sentence 2: {effect}", ["effect"]))
        rows.append((f"Sentence 1: {effect} Sentence 2: {cause}", ["cause"]))
    return rows


def keywords(rng):
    rows = []
    for template, fillers in KEYWORD_SENTENCES:
        for filler in fillers:
            rows.append((f"Sentence: {template.format(x=filler)}", [filler]))
    return rows


def letter_count_facts(rng):
    rows = []
    for word in FACT_WORDS:
        n = len(word) if rng.random() < 0.5 else len(word) + rng.choice([-1, 1])
        label = "yes" if n == len(word) else "no"
        rows.append((f"Claim: The word '{word}' has {NUMBER_WORDS[n]} letters.", [label]))
    return rows


def sentiment_reviews_fi(rng):
    rows = []
    for thing in FI_REVIEW_THINGS:
        for adj in rng.sample(FI_POSITIVE, 2):
            rows.append((f"Arvostelu: {thing} oli {adj}.", ["positiivinen"]))
        for adj in rng.sample(FI_NEGATIVE, 2):
            rows.append((f"Arvostelu: {thing} oli {adj}.", ["negatiivinen"]))
    return rows


def sentiment_movies_fi(rng):
    rows = []
    for part in FI_MOVIE_PARTS:
        for adj in rng.sample(FI_MOVIE_POSITIVE, 2):
            rows.append((f"Elokuva-arvostelu: {part} oli {adj}.", ["positiivinen"]))
        for adj in rng.sample(FI_MOVIE_NEGATIVE, 2):
            rows.append((f"Elokuva-arvostelu: {part} oli {adj}.", ["negatiivinen"]))
    return rows


def capitals_fi(rng):
    return [(f"Mikä on {country} pääkaupunki?", [capital]) for country, capital in FI_CAPITALS]


# --------------------------------------------------------------------------- task specs
def _ex(inp, out, explanation):
    return {"input": inp, "output": out, "explanation": explanation}


TASKS = [
    # ---------------- default train split
    dict(number=9001, name="task9001_tkx_review_sentiment_polarity", split="train",
         categories=["Sentiment Analysis"], reasoning=["Commonsense Reasoning"], domains=["Reviews"],
         definition="In this task, you are given a short product or service review. Classify its sentiment as \"positive\" or \"negative\".",
         positive=[_ex("Review: The tea was wonderful.", "positive", "The reviewer liked the tea."),
                   _ex("Review: The lamp was broken.", "negative", "A broken lamp is a complaint.")],
         negative=[_ex("Review: The bread was awful.", "positive", "Awful is a negative word, so the answer should be negative.")],
         make=sentiment_reviews),
    dict(number=9002, name="task9002_tkx_antonym_generation", split="train",
         categories=["Word Semantics"], reasoning=["Commonsense Reasoning"], domains=["Dictionary"],
         definition="Given a word, write its antonym, that is, a word with the opposite meaning.",
         positive=[_ex("Word: wet", "dry", "Dry is the opposite of wet."),
                   _ex("Word: up", "down", "Down is the opposite of up.")],
         negative=[_ex("Word: big", "large", "Large means the same as big; it is a synonym, not an antonym.")],
         make=antonyms),
    dict(number=9003, name="task9003_tkx_arithmetic_word_problems", split="train",
         categories=["Mathematics"], reasoning=["Numerical Reasoning"], domains=["Mathematics"],
         definition="You are given a short math word problem with numbers written in words. Answer with the resulting number written in words.",
         positive=[_ex("Leo has two pens and gets three more. How many pens does Leo have now?", "five", "Two plus three is five."),
                   _ex("Rosa has nine coins and gives away four. How many coins does Rosa have now?", "five", "Nine minus four is five.")],
         negative=[_ex("Sam has one card and gets one more. How many cards does Sam have now?", "2", "The answer must be written in words: two.")],
         make=arithmetic),
    dict(number=9004, name="task9004_tkx_country_capital_answering", split="train",
         categories=["Question Answering"], reasoning=["Commonsense Reasoning"], domains=["Geography"],
         definition="Answer the question with the name of the capital city of the given country.",
         positive=[_ex("What is the capital of Uganda?", "Kampala", "Kampala is the capital of Uganda."),
                   _ex("What is the capital of Nepal?", "Kathmandu", "Kathmandu is the capital of Nepal.")],
         negative=[_ex("What is the capital of Switzerland?", "Zurich", "Zurich is the largest city, but the capital is Bern.")],
         make=capitals),
    dict(number=9005, name="task9005_tkx_reverse_word_order", split="train",
         categories=["Program Execution"], reasoning=["Reasoning on Strings"], domains=["Miscellaneous"],
         definition="Reverse the order of the words in the given sentence. Do not change the words themselves.",
         positive=[_ex("Sentence: a b c", "c b a", "The words are written from last to first."),
                   _ex("Sentence: I see you", "you see I", "The three words appear in reverse order.")],
         negative=[_ex("Sentence: go home now", "og emoh won", "The letters were reversed instead of the word order.")],
         make=reverse_words),
    dict(number=9006, name="task9006_tkx_uppercase_word", split="train",
         categories=["Program Execution"], reasoning=["Reasoning on Strings"], domains=["Miscellaneous"],
         definition="Rewrite the given word using only uppercase letters.",
         positive=[_ex("Word: lamp", "LAMP", "Every letter is uppercase."),
                   _ex("Word: sky", "SKY", "Every letter is uppercase.")],
         negative=[_ex("Word: rain", "Rain", "Only the first letter is uppercase.")],
         make=uppercase),
    dict(number=9007, name="task9007_tkx_plural_form_generation", split="train",
         categories=["Word Semantics"], reasoning=["Commonsense Reasoning"], domains=["Dictionary"],
         definition="Write the plural form of the given English noun.",
         positive=[_ex("Singular: shoe", "shoes", "Add s to make shoe plural."),
                   _ex("Singular: fly", "flies", "A final y after a consonant becomes ies.")],
         negative=[_ex("Singular: sheep", "sheeps", "The plural of sheep is sheep.")],
         make=plurals),
    dict(number=9008, name="task9008_tkx_sort_letters", split="train",
         categories=["Program Execution"], reasoning=["Reasoning on Strings"], domains=["Miscellaneous"],
         definition="Sort the letters of the given word in alphabetical order and write them as one string.",
         positive=[_ex("Word: bca", "abc", "a comes before b, and b before c."),
                   _ex("Word: tea", "aet", "The letters a, e, t are in alphabetical order.")],
         negative=[_ex("Word: dog", "god", "This is an anagram, not the sorted letters dgo.")],
         make=sort_letters),
    dict(number=9009, name="task9009_tkx_number_parity_classification", split="train",
         categories=["Text Categorization"], reasoning=["Numerical Reasoning"], domains=["Mathematics"],
         definition="Classify the given whole number as \"even\" or \"odd\".",
         positive=[_ex("Number: 8", "even", "8 is divisible by 2."),
                   _ex("Number: 21", "odd", "21 is not divisible by 2.")],
         negative=[_ex("Number: 10", "odd", "10 is divisible by 2, so it is even.")],
         make=parity),
    dict(number=9010, name="task9010_tkx_capital_fact_verification", split="train",
         categories=["Fact Verification"], reasoning=["Commonsense Reasoning"], domains=["Geography"],
         definition="Read the claim about a capital city. Answer \"yes\" if the claim is true and \"no\" if it is false.",
         positive=[_ex("Claim: Kampala is the capital of Uganda.", "yes", "The claim is true."),
                   _ex("Claim: Zurich is the capital of Switzerland.", "no", "The capital of Switzerland is Bern.")],
         negative=[_ex("Claim: Bern is the capital of Switzerland.", "true", "The answer must be yes or no.")],
         make=capital_facts),
    dict(number=9011, name="task9011_tkx_synonym_selection", split="train",
         categories=["Word Semantics"], reasoning=["Commonsense Reasoning"], domains=["Dictionary"],
         definition="Given a word and three options, pick the option that has the same meaning as the word.",
         positive=[_ex("Word: little. Options: lamp, small, blue", "small", "Little and small mean the same."),
                   _ex("Word: finish. Options: end, dog, salt", "end", "Finish and end mean the same.")],
         negative=[_ex("Word: hot. Options: warm, cold, ten", "cold", "Cold is the opposite of hot.")],
         make=synonym_pick),
    dict(number=9012, name="task9012_tkx_sentence_title_generation", split="train",
         categories=["Title Generation"], reasoning=["Commonsense Reasoning"], domains=["News"],
         definition="Write a short title for the given sentence. Use title case and leave out dates and times.",
         positive=[_ex("Sentence: The zoo opened a new aquarium on Sunday.", "Zoo Opens New Aquarium", "The title keeps the main event."),
                   _ex("Sentence: The town built a small harbor last year.", "Town Builds Small Harbor", "The title is short and in title case.")],
         negative=[_ex("Sentence: The bank closed a branch on Monday.", "On Monday", "The title must describe the event.")],
         make=titles),
    dict(number=9013, name="task9013_tkx_comparison_textual_entailment", split="train",
         categories=["Textual Entailment"], reasoning=["Textual Entailment", "Deductive Reasoning"], domains=["Miscellaneous"],
         definition="You are given a premise and a hypothesis comparing two people. Answer \"yes\" if the premise entails the hypothesis, otherwise answer \"no\".",
         positive=[_ex("Premise: Olga is taller than Sam. Hypothesis: Sam is shorter than Olga.", "yes", "If Olga is taller, Sam is shorter."),
                   _ex("Premise: Olga is taller than Sam. Hypothesis: Sam is taller than Olga.", "no", "This contradicts the premise.")],
         negative=[_ex("Premise: Tina is faster than Leo. Hypothesis: Leo is slower than Tina.", "no", "The hypothesis follows from the premise, so the answer is yes.")],
         make=size_entailment),
    dict(number=9014, name="task9014_tkx_comparative_word_analogy", split="train",
         categories=["Word Analogy"], reasoning=["Analogical Reasoning"], domains=["Dictionary"],
         definition="Complete the analogy \"A : B :: C : ?\". The relation between A and B is the relation between C and the answer. Answer with one word.",
         positive=[_ex("nice : nicer :: cheap : ?", "cheaper", "The second word is the comparative form."),
                   _ex("kind : kinder :: calm : ?", "calmer", "The second word is the comparative form.")],
         negative=[_ex("fast : faster :: slow : ?", "slowest", "Slowest is the superlative; the answer is slower.")],
         make=comparative_analogies),
    dict(number=9015, name="task9015_tkx_subject_verb_agreement_correction", split="train",
         categories=["Grammar Error Correction"], reasoning=["Commonsense Reasoning"], domains=["Miscellaneous"],
         definition="The given sentence has a grammar error: the verb does not agree with the subject. Rewrite the sentence with the error corrected.",
         positive=[_ex("The bird sing in the tree.", "The bird sings in the tree.", "Bird is singular, so the verb is sings."),
                   _ex("My brother drive to work.", "My brother drives to work.", "Brother is singular, so the verb is drives.")],
         negative=[_ex("The horse eat hay.", "The horse eat hay.", "The error was not corrected.")],
         make=agreement_correction),
    dict(number=9016, name="task9016_tkx_record_to_sentence", split="train",
         categories=["Data to Text"], reasoning=["Commonsense Reasoning"], domains=["Miscellaneous"],
         definition="Write one sentence that states all the facts in the given record.",
         positive=[_ex("name: Omar | job: tailor | city: Quito", "Omar is a tailor from Quito.", "All three facts are stated."),
                   _ex("name: Lena | job: judge | city: Bern", "Lena is a judge from Bern.", "All three facts are stated.")],
         negative=[_ex("name: Omar | job: tailor | city: Quito", "Omar is a tailor.", "The city is missing.")],
         make=records),
    dict(number=9017, name="task9017_tkx_cause_effect_classification", split="train",
         categories=["Cause Effect Classification"], reasoning=["Causal Reasoning", "Commonsense Reasoning"], domains=["Commonsense"],
         definition="You are given two sentences. Answer \"effect\" if the second sentence is an effect of the first one, and \"cause\" if it is the cause of the first one.",
         positive=[_ex("Sentence 1: The snow melted. Sentence 2: The sun came out.", "cause", "The sun made the snow melt."),
                   _ex("Sentence 1: The sun came out. Sentence 2: The snow melted.", "effect", "The snow melted because of the sun.")],
         negative=[_ex("Sentence 1: Omar slipped. Sentence 2: Omar fell.", "cause", "Falling is the effect of slipping.")],
         make=cause_effect),
    dict(number=9018, name="task9018_tkx_sentence_keyword_tagging", split="train",
         categories=["Keyword Tagging"], reasoning=["Commonsense Reasoning"], domains=["Miscellaneous"],
         definition="Write the keyword of the given sentence: the noun that the sentence is mainly about.",
         positive=[_ex("Sentence: The kite flew high above the beach.", "kite", "The sentence is about a kite."),
                   _ex("Sentence: We painted the fence blue.", "fence", "The sentence is about the fence.")],
         negative=[_ex("Sentence: The kite flew high above the beach.", "flew", "Flew is a verb, not the main noun.")],
         make=keywords),
    dict(number=9019, name="task9019_tkx_letter_count_fact_verification", split="train",
         categories=["Fact Verification"], reasoning=["Reasoning on Strings", "Numerical Reasoning"], domains=["Miscellaneous"],
         definition="Check the claim about how many letters a word has. Answer \"yes\" if it is correct and \"no\" otherwise.",
         positive=[_ex("Claim: The word 'sun' has three letters.", "yes", "s, u, n: three letters."),
                   _ex("Claim: The word 'moon' has five letters.", "no", "moon has four letters.")],
         negative=[_ex("Claim: The word 'cat' has three letters.", "no", "cat has three letters, so the claim is correct.")],
         make=letter_count_facts),
    # ---------------- default test split: each resembles a training task
    dict(number=9101, name="task9101_tkx_age_comparison_textual_entailment", split="test",
         categories=["Textual Entailment"], reasoning=["Textual Entailment", "Deductive Reasoning"], domains=["Miscellaneous"],
         definition="Given a premise and a hypothesis about two people, answer \"yes\" if the hypothesis follows from the premise and \"no\" if it does not.",
         positive=[_ex("Premise: Ben is older than Iris. Hypothesis: Iris is younger than Ben.", "yes", "Older and younger are converses."),
                   _ex("Premise: Ben is older than Iris. Hypothesis: Ben is younger than Iris.", "no", "This contradicts the premise.")],
         negative=[_ex("Premise: Kate is heavier than Jack. Hypothesis: Jack is lighter than Kate.", "no", "The hypothesis follows, so the answer is yes.")],
         make=age_entailment),
    dict(number=9102, name="task9102_tkx_plural_word_analogy", split="test",
         categories=["Word Analogy"], reasoning=["Analogical Reasoning"], domains=["Dictionary"],
         definition="Complete the analogy \"A : B :: C : ?\" with one word so that C and the answer are related like A and B.",
         positive=[_ex("shoe : shoes :: hat : ?", "hats", "The second word is the plural."),
                   _ex("fly : flies :: city : ?", "cities", "The second word is the plural.")],
         negative=[_ex("mouse : mice :: goose : ?", "gooses", "The plural of goose is geese.")],
         make=plural_analogies),
    dict(number=9103, name="task9103_tkx_news_headline_generation", split="test",
         categories=["Title Generation"], reasoning=["Commonsense Reasoning"], domains=["News"],
         definition="Generate a short headline in title case for the given news sentence. Do not include when it happened.",
         positive=[_ex("News: The bakery won a prize on Monday.", "Bakery Wins Prize", "Short, title case, no date."),
                   _ex("News: The club sold its old boat last week.", "Club Sells Old Boat", "Short, title case, no date.")],
         negative=[_ex("News: The zoo bought a new bus yesterday.", "Yesterday", "The headline must describe the event.")],
         make=headlines),
    dict(number=9104, name="task9104_tkx_movie_review_sentiment", split="test",
         categories=["Sentiment Analysis"], reasoning=["Commonsense Reasoning"], domains=["Movies", "Reviews"],
         definition="Decide whether the given movie review is \"positive\" or \"negative\".",
         positive=[_ex("Movie review: The songs were lovely.", "positive", "Lovely is praise."),
                   _ex("Movie review: The jokes were stale.", "negative", "Stale jokes are a complaint.")],
         negative=[_ex("Movie review: The plot was boring.", "positive", "Boring is negative.")],
         make=sentiment_movies),
    dict(number=9105, name="task9105_tkx_article_error_correction", split="test",
         categories=["Grammar Error Correction"], reasoning=["Commonsense Reasoning"], domains=["Miscellaneous"],
         definition="The sentence uses the wrong article (\"a\" or \"an\"). Rewrite it with the correct article.",
         positive=[_ex("Omar ate an pear.", "Omar ate a pear.", "Pear starts with a consonant sound."),
                   _ex("Lena drew a eagle.", "Lena drew an eagle.", "Eagle starts with a vowel sound.")],
         negative=[_ex("Omar ate an pear.", "Omar ate an pear.", "The error was not corrected.")],
         make=article_correction),
    # ---------------- x-lingual track (Finnish): train and test over Finnish tasks
    dict(number=9201, name="task9201_tkx_review_sentiment_polarity_fi", split="train", track="xlingual", language="Finnish",
         categories=["Sentiment Analysis"], reasoning=["Commonsense Reasoning"], domains=["Reviews"],
         definition="Tässä tehtävässä saat lyhyen arvostelun. Luokittele sen sävy: \"positiivinen\" tai \"negatiivinen\".",
         positive=[_ex("Arvostelu: Tee oli ihana.", "positiivinen", "Arvostelija piti teestä."),
                   _ex("Arvostelu: Lamppu oli rikki.", "negatiivinen", "Rikkinäinen lamppu on valitus.")],
         negative=[_ex("Arvostelu: Leipä oli kamala.", "positiivinen", "Kamala on kielteinen sana.")],
         make=sentiment_reviews_fi),
    dict(number=9202, name="task9202_tkx_country_capital_answering_fi", split="train", track="xlingual", language="Finnish",
         categories=["Question Answering"], reasoning=["Commonsense Reasoning"], domains=["Geography"],
         definition="Vastaa kysymykseen kertomalla maan pääkaupungin nimi.",
         positive=[_ex("Mikä on Ugandan pääkaupunki?", "Kampala", "Kampala on Ugandan pääkaupunki."),
                   _ex("Mikä on Nepalin pääkaupunki?", "Kathmandu", "Kathmandu on Nepalin pääkaupunki.")],
         negative=[_ex("Mikä on Sveitsin pääkaupunki?", "Zürich", "Sveitsin pääkaupunki on Bern.")],
         make=capitals_fi),
    dict(number=9203, name="task9203_tkx_movie_review_sentiment_fi", split="test", track="xlingual", language="Finnish",
         categories=["Sentiment Analysis"], reasoning=["Commonsense Reasoning"], domains=["Movies", "Reviews"],
         definition="Päätä, onko elokuva-arvostelu \"positiivinen\" vai \"negatiivinen\".",
         positive=[_ex("Elokuva-arvostelu: Laulut olivat ihania.", "positiivinen", "Ihana on kehu."),
                   _ex("Elokuva-arvostelu: Vitsit olivat vanhoja.", "negatiivinen", "Vanhat vitsit ovat moite.")],
         negative=[_ex("Elokuva-arvostelu: Juoni oli tylsä.", "positiivinen", "Tylsä on kielteinen.")],
         make=sentiment_movies_fi),
]


def build_task(spec):
    rng = random.Random(SEED + spec["number"])
    seen, instances = set(), []
    for index, (text, outputs) in enumerate(spec["make"](rng)):
        if text in seen:
            continue
        seen.add(text)
        instances.append({"id": _instance_id(spec["number"], spec["name"], index, text),
                          "input": text, "output": list(outputs)})
    return {
        "Contributors": CONTRIBUTORS,
        "Source": SOURCE,
        "URL": URL,
        "Categories": spec["categories"],
        "Reasoning": spec["reasoning"],
        "Definition": [spec["definition"]],
        "Input_language": [spec.get("language", "English")],
        "Output_language": [spec.get("language", "English")],
        "Instruction_language": [spec.get("language", "English")],
        "Domains": spec["domains"],
        "Positive Examples": spec["positive"],
        "Negative Examples": spec["negative"],
        "Instances": instances,
        "Instance License": LICENSE,
    }


def write_sample(out_dir=TASKS_DIR):
    out_dir = pathlib.Path(out_dir)
    (out_dir / "tasks").mkdir(parents=True, exist_ok=True)
    splits = {}
    for spec in TASKS:
        task = build_task(spec)
        if len(task["Instances"]) < 30:
            raise ValueError(f"{spec['name']}: only {len(task['Instances'])} distinct instances (need >= 30)")
        with open(out_dir / "tasks" / f"{spec['name']}.json", "w", encoding="utf-8") as f:
            json.dump(task, f, indent=2, ensure_ascii=False)
            f.write("\n")
        track = spec.get("track", "default")
        splits.setdefault((track, spec["split"]), []).append(spec["name"])
        print(f"{spec['name']}: {len(task['Instances'])} instances ({track}/{spec['split']})")
    for (track, split), names in sorted(splits.items()):
        (out_dir / "splits" / track).mkdir(parents=True, exist_ok=True)
        with open(out_dir / "splits" / track / f"{split}_tasks.txt", "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in names))
    return splits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(TASKS_DIR))
    parser.add_argument("--spm", action="store_true", help="also retrain tasks/spm/tkx_sample.model")
    args = parser.parse_args()
    write_sample(args.out_dir)
    if args.spm:
        # Imported here so building the JSON files needs nothing but the standard library.
        import sys
        sys.path.insert(0, os.fspath(TASKS_DIR.parent))
        from tkx.data import vocab
        vocab.train_sample_vocabulary(ni_dir=args.out_dir)


if __name__ == "__main__":
    main()
