#!/usr/bin/env python3
"""Writes a tiny extractive question-answering set in the official SQuAD v2.0 JSON layout:
OUT_DIR/train.json (120 paragraphs, 360 questions by default) and OUT_DIR/validation.json
(30 paragraphs, 90 questions). The paragraphs are GENERATED from the templates and word
lists in this file with a fixed seed: they describe invented companies, rivers, inventions,
people, towns, cafés and clubs, and none of it is true. The set exists so that the SQuAD
preprocessing, training and evaluation paths can be tested without any download.

What it is built to exercise:
  * seven kinds of paragraph, each with several sentence templates, and several phrasings
    per kind of question, so that a small model can learn the patterns; every answer is a
    short span of the context (a year, a name, a town, a number, an object);
  * the people, towns, rivers, hills, companies, books, inventions, cafés, streets and
    meeting places of validation.json never occur in train.json (disjoint pools), so the
    validation score measures reading, not memory;
  * about 10% of the questions of each split are unanswerable ("answers": [],
    "is_impossible": true): they ask for a fact that the paragraph leaves out;
  * accented characters ("Zoë", "Mäkelä", "São Brás", "crème brûlée") and answers next to
    punctuation ("(1887)", "Bellhaven,", "“The Salt Road”", "1,200"), for the tokenizer's
    character offsets;
  * answers that occur twice in their context, where answer_start points at the occurrence
    that answers the question.

Every answer is checked (context[answer_start:answer_start + len(text)] == text) before
anything is written; the output is byte-for-byte the same for the same arguments.

usage: make_tiny_squad.py OUT_DIR [--train N] [--validation N] [--seed S]
                          [--unanswerable P] [--train-unanswerable P]
"""
import argparse
import json
import os
import random
import re

# Entity pools, disjoint between the splits (checked in check_disjoint).
POOLS = {
    "train": {
        "first": ["Edith", "Arthur", "Margaret", "Thomas", "Clara", "Henry", "Agnes", "Walter", "Ada",
                  "Samuel", "Harriet", "George", "Louisa", "Frederick", "Martha", "Albert", "Irene",
                  "Oswald", "Beatrice", "Hugh", "Zoë", "Renée", "José", "Søren", "Inés", "Jörg", "Mabel",
                  "Cyril", "Winifred", "Rupert", "Nora", "Felix", "Dora", "Jasper", "Ivy", "Leonard"],
        "surname": ["Carrow", "Pellham", "Ashdown", "Trevick", "Mossley", "Whitlock", "Danby", "Farrant",
                    "Greaves", "Holloway", "Kestrel", "Lindqvist", "Mäkelä", "Duchâtel", "Araújo",
                    "Brennan", "Corrie", "Eastwick", "Fenwick", "Garside", "Hartigan", "Ingram", "Jessop",
                    "Kimber", "Lowther", "Marchbank", "Norcott", "Oakes", "Prideaux", "Quennell",
                    "Rookwood", "Sallow", "Thwaite", "Underhill", "Varley", "Wrenfield"],
        "town": ["Bellhaven", "Tollford", "Ashcombe Vale", "Cresswick", "Dunmere", "Fallowmouth", "Greyholm",
                 "Hatherby", "Inchmoor", "Kelderby", "Lanford Bridge", "Marbury", "Northwold", "Oxley Green",
                 "Pennock", "Quayle Point", "Rushmere", "Saltwick", "Tarnby", "Upwell Cross", "Vennford",
                 "Westerleigh", "Yelbury", "Brindle", "Coldstow", "Dapple Hythe", "Everdon Mill",
                 "Farrowby", "Gillmouth", "Holmbridge", "São Brás", "Château-Lune", "Åsvik", "Port Ébène",
                 "Kingsferry", "Little Amwell", "Marsh Tey", "Oakenshaw", "Ravensworth", "Stilby"],
        "river": ["Alder", "Brennet", "Corran", "Dallow", "Elsing", "Fenner", "Garrow", "Hessick",
                  "Ilsbourne", "Kellan", "Lorrow", "Marden", "Nessing", "Orwen", "Pallet", "Quill",
                  "Sorrel", "Tamber", "Ullow", "Vennick", "Wharle", "Brisk", "Cobble", "Dunny", "Emmet",
                  "Fallow", "Glint", "Hollin", "Lisle", "Mawby"],
        "hills": ["Marrow", "Blackthorn", "Greyfell", "Harrier", "Wyndle", "Colder", "Penhallow", "Stannick"],
        "stem": ["Marlow", "Harbour", "Northgate", "Kingsley", "Riverside", "Ashford", "Blue Anchor", "Crown",
                 "Eagle", "Lantern", "Meridian", "Oakfield", "Pioneer", "Queensway", "Redhill",
                 "Silverline", "Thistle", "Union", "Victory", "Westbrook"],
        "book": ["The Salt Road", "A Winter Harbour", "Under the Lamplight", "The Glass Orchard",
                 "The Quiet Mill", "Seven Bridges", "The Cartographer's Daughter", "North of the Weir",
                 "A Field of Larks", "The Copper Kettle", "Lanterns at Dusk", "The Long Tide", "Small Hours",
                 "The Heron's Path", "Stone and Feather", "A House of Clocks", "The Orchard Wall",
                 "The Last Ferry", "Paper Boats", "Winter Apples"],
        "invention": [("lantern", "lanterns"), ("tide clock", "tide clocks"), ("loom", "looms"),
                      ("pump", "pumps"), ("compass", "compasses"), ("printing press", "printing presses"),
                      ("kettle", "kettles"), ("weighing scale", "weighing scales"),
                      ("diving bell", "diving bells"), ("seed drill", "seed drills"),
                      ("fog horn", "fog horns"), ("rain gauge", "rain gauges"),
                      ("butter churn", "butter churns"), ("ice saw", "ice saws")],
        "cafe": ["Café Nouveau", "Café Lumière", "The Blue Kettle", "The Copper Pot", "The Green Teapot",
                 "The Old Mill Tearoom", "Café Belvédère", "The Lantern Rooms", "The Harbour Kitchen",
                 "The Walnut Tree", "The Silver Spoon", "Café Rosé"],
        "street": ["Harbour Street", "Mill Lane", "Rue des Fleurs", "Market Square", "Station Road",
                   "Church Walk", "Quay Street", "Rua Nova"],
        "venue": ["the back room of the Swan Inn", "the old corn exchange", "a schoolroom on Mill Lane",
                  "the vicarage hall", "the upstairs room of the Railway Tavern"],
    },
    "validation": {
        "first": ["Philippa", "Edmund", "Rosalind", "Ambrose", "Constance", "Barnaby", "Millicent",
                  "Gideon", "Theodora", "Lucian", "Chloé", "Anselm", "Verity", "Crispin", "Marguerite",
                  "Ottilie"],
        "surname": ["Haverley", "Stonebridge", "Quarrington", "Belcourt", "Fairweather", "Ollerton",
                    "Pennick", "Radstock", "Tamsett", "Wexcombe", "Yardley", "Ferrão", "Ludgrove",
                    "Amberly", "Castellane", "Dewhurst"],
        "town": ["Wyncombe", "Brackenridge", "Coldharbour", "Dellbrook", "Emberton", "Frostwick",
                 "Glenmarrow", "Holtby Ferry", "Larchmouth", "Mossbank", "Nettlecombe", "Orrin Bay",
                 "Pellmarsh", "Redwater Quay", "Sandrell", "Thornaby Cross", "Bréval"],
        "river": ["Sable", "Tarrow", "Whinny", "Oakle", "Mirren", "Lathe", "Keld", "Jessel", "Harth",
                  "Gorran"],
        "hills": ["Saddlecombe", "Kestle", "Rimmon", "Tallowfell"],
        "stem": ["Beacon", "Cobalt", "Falcon", "Granite", "Kittiwake", "Juniper", "Larkspur", "Osprey",
                 "Sterling", "Tidewater"],
        "book": ["The Amber Gate", "Rain over the Marshes", "The Tin Soldier's Map", "Harvest Moon Lane",
                 "The Silent Loom", "A Ladder of Clouds", "Evening at the Quay", "The Ninth Lantern"],
        "invention": [("barometer", "barometers"), ("washing mangle", "washing mangles"),
                      ("rope winch", "rope winches"), ("signal lamp", "signal lamps"),
                      ("potato lifter", "potato lifters"), ("wind vane", "wind vanes")],
        "cafe": ["Café Mirabelle", "The Brass Lamp", "The Plum Tree", "The Tidy Larder", "Café Estrela"],
        "street": ["Bridge Row", "Tanners Lane", "Abbey Parade", "Ropewalk"],
        "venue": ["the old grain store", "the back room of the Fleece Inn", "the town library"],
    },
}

# Shared word lists: the kinds of thing that answers are, not named entities.
INDUSTRIES = [("Glass", ["lenses for lighthouses", "glass bottles", "window panes"]),
              ("Rope", ["ropes for fishing boats", "ship's cables", "bell ropes"]),
              ("Clock", ["church clocks", "pocket watches", "kitchen clocks"]),
              ("Paper", ["writing paper", "paper bags", "playing cards"]),
              ("Soap", ["bars of laundry soap", "candles", "scented soap"]),
              ("Biscuit", ["ship's biscuits", "ginger biscuits", "oat cakes"]),
              ("Pottery", ["clay pipes", "teapots", "roof tiles"]),
              ("Boat", ["rowing boats", "fishing smacks", "canal barges"]),
              ("Lamp", ["oil lamps", "miners' lamps", "street lamps"]),
              ("Cloth", ["woollen blankets", "sailcloth", "tweed"])]
WORKERS = ["120", "250", "400", "four hundred", "1,200", "2,500", "fifty", "600", "85", "3,000", "ninety"]
LENGTHS = ["48 kilometres", "63 kilometres", "95 kilometres", "120 kilometres", "31 kilometres",
           "140 kilometres", "77 kilometres", "210 kilometres"]
INVENTION_ADJECTIVES = ["folding", "brass", "steam", "pocket", "double", "hand-cranked", "iron", "portable"]
INVENTOR_JOBS = ["clockmaker", "ship's carpenter", "schoolteacher", "blacksmith", "lighthouse keeper",
                 "miller", "chemist", "printer", "surveyor", "weaver"]
USERS = ["fishermen", "miners", "farmers", "sailors", "weavers", "bakers", "shepherds"]
COUNTS = ["forty", "200", "1,500", "three hundred", "600", "2,000", "ninety", "12,000"]
WRITER_JOBS = ["painter", "botanist", "poet", "mapmaker", "schoolteacher", "ship's doctor", "architect",
               "journalist", "nurse"]
TOPICS = ["the birds of the coast", "life on the canals", "the history of clockmaking", "mountain plants",
          "the fishing villages of the north", "old sailing ships", "country cooking", "the stars"]
BOOK_COUNTS = ["three", "five", "seven", "eleven", "twelve", "four"]
COPIES = ["8,000", "12,000", "20,000", "5,500", "forty thousand", "30,000"]
POPULATIONS = ["2,400", "5,800", "11,000", "900", "three thousand", "17,500", "7,200"]
SPECIALTIES = ["lace", "blue pottery", "cider", "horse fair", "pork pies", "woollen cloth", "smoked eels",
               "clock towers", "cheese market"]
DISHES = ["crème brûlée", "smoked fish pies", "apple cake", "hot chocolate", "crêpes with honey",
          "pork pies", "saffron buns", "onion soup", "lemon tarts"]
SEATS = ["twenty", "thirty-two", "forty", "sixty", "18", "45"]
CUSTOMERS = ["three hundred", "150", "500", "a thousand", "220"]
CLUBS = [("Choral Society", "singers"), ("Rowing Club", "oarsmen"), ("Chess Club", "players"),
         ("Brass Band", "musicians"), ("Cycling Club", "riders"), ("Photographic Society", "photographers"),
         ("Swimming Club", "swimmers"), ("Drama Society", "actors")]
FOUNDERS = ["seven", "twelve", "nine", "fifteen", "eight", "twenty"]
MEMBERS = ["sixty", "120", "forty-five", "200", "340", "1,100"]
TENURES = ["twelve years", "thirty years", "eight years", "twenty-one years", "six years"]

# Sentences with no answer in them, appended (never prepended: spans would move) to reach
# 30-80 words and to vary the paragraphs.
FILLERS = {
    "company": ["Its red-brick works still stand beside the old canal.",
                "The business stayed in the same family for three generations.",
                "Local people still call the site the old works.",
                "Some of its early products are now kept in the town museum."],
    "river": ["Otters have returned to its lower reaches in recent years.",
              "Its valley is popular with walkers in the summer.",
              "In wet winters the river often floods the meadows along its banks.",
              "Salmon were once caught there in large numbers."],
    "invention": ["Early models are now rare and sought after by collectors.",
                  "The design was copied widely within a few years.",
                  "A working example can still be seen in the county museum.",
                  "Its inventor never became rich from it."],
    "person": ["A small plaque now marks the house where the family lived.",
               "Several of the letters survive in a county archive.",
               "Critics at the time were divided.",
               "The books are still read in local schools."],
    "town": ["Its narrow streets still follow the medieval plan.",
             "A fair is held on the green every autumn.",
             "The railway station closed many years ago.",
             "Many of its houses are built of local stone."],
    "cafe": ["Its tiled floor and long counter are still original.",
             "Students and market traders were its most loyal customers.",
             "The building is now protected.",
             "On Saturdays the queue often reached the corner."],
    "club": ["Its early records are kept in a tin box by the secretary.",
             "New members are still welcome at every meeting.",
             "The club has never missed a season.",
             "Its annual dinner is one of the busiest evenings in the town."],
}


def full_name(rng, pool, avoid=()):
    while True:
        name = f"{rng.choice(pool['first'])} {rng.choice(pool['surname'])}"
        if name not in avoid:
            return name


def surname(name):
    return name.split(" ", 1)[1]


# Each kind returns (title, templates, values, questions, impossible). A template is a
# string with {key} placeholders; questions maps an answer key to its phrasings; keys
# ending in "_again" repeat an earlier value, and their question is always asked.
# the last item pairs the templates that leave a fact out with the phrasings of the
# question about that fact, which is then unanswerable.

def company(rng, pool, title):
    industry, products = rng.choice(INDUSTRIES)
    name = title(lambda: f"{rng.choice(pool['stem'])} {industry} Company")
    founder = full_name(rng, pool)
    year = rng.randint(1820, 1905)
    v = dict(company=name, founder=founder, surname=surname(founder), year=year,
             town=rng.choice(pool["town"]), product=rng.choice(products), year2=year + rng.randint(12, 40),
             workers=rng.choice(WORKERS))
    v["town_again"] = v["town"]
    templates = [
        "The {company} was founded in {year} by {founder} in the town of {town}. "
        "It first made {product}, and by {year2} it employed {workers} workers.",
        "{founder} started the {company} in {town} in {year}. Its first products were {product}. "
        "By {year2} the firm had {workers} employees.",
        "Founded by {founder} in {year}, the {company} grew from a single workshop in {town}, "
        "where it made {product}. It employed {workers} people by {year2}.",
        "The {company} ({year}) began in {town}, a small town on the coast, where {founder} set up "
        "a workshop making {product}. By {year2} it had {workers} workers.",
        "{founder} founded the {company} in {town} in {year}, and its first goods were {product}. "
        "In {year2} it opened a second, larger works outside {town_again}, where {workers} people were employed.",
    ]
    missing = [
        "The {company} was founded in {year} in the town of {town}. "
        "It first made {product}, and by {year2} it employed {workers} workers.",
        "The {company} ({year}) began in {town}, where it made {product}. By {year2} it had {workers} workers.",
    ]
    questions = {
        "founder": ["Who founded the {company}?", "Who started the {company}?",
                    "Which person founded the {company}?"],
        "year": ["When was the {company} founded?", "In what year was the {company} founded?",
                 "What year did the {company} begin?"],
        "town": ["In which town was the {company} founded?", "Where was the {company} founded?",
                 "Where did the {company} begin?"],
        "product": ["What did the {company} first make?", "What were the first products of the {company}?",
                    "What did the {company} make at first?"],
        "workers": ["How many workers did the {company} employ by {year2}?",
                    "How many people worked for the {company} by {year2}?"],
        "town_again": ["Near which town did the {company} open its second works in {year2}?",
                       "Outside which town was the second works of the {company}?"],
    }
    return name, templates, v, questions, (missing, questions["founder"])


def river(rng, pool, title):
    name = title(lambda: f"River {rng.choice(pool['river'])}")
    source, mouth, middle = rng.sample(pool["town"], 3)
    v = dict(river=name, hills=f"{rng.choice(pool['hills'])} Hills", source=source, mouth=mouth,
             length=rng.choice(LENGTHS), year=rng.randint(1690, 1880), engineer=full_name(rng, pool))
    templates = [
        ("The {river} rises in the {hills} near {source} and flows {length} to the sea at {mouth}. "
         "The first bridge over the river, at {bridge_town}, was built in {year} by the engineer {engineer}.",
         mouth),
        ("Rising near {source}, the {river} runs for {length} before it meets the sea at {mouth}, "
         "a busy fishing port. In {year}, the engineer {engineer} built the first bridge across it, "
         "at {bridge_town}.", source),
        ("The {river} is {length} long. Its source lies in the {hills}, close to the village of "
         "{source}, and it enters the sea at {mouth}. {engineer} built the first bridge over it in {year}, "
         "at {bridge_town}.", middle),
    ]
    # The bridge stands at the mouth or the source (the same town named twice) or elsewhere.
    template, v["bridge_town"] = rng.choice(templates)
    missing = [
        "The {river} rises in the {hills} near {source} and flows {length} to the sea at {mouth}. "
        "The first bridge over it, at {bridge_town}, was built of local stone in {year}.",
    ]
    questions = {
        "source": ["Near which place does the {river} rise?", "Where is the source of the {river}?"],
        "hills": ["In which hills does the {river} rise?", "Which hills hold the source of the {river}?"],
        "length": ["How long is the {river}?", "What is the length of the {river}?"],
        "mouth": ["Where does the {river} reach the sea?", "At which town does the {river} enter the sea?"],
        "year": ["When was the first bridge over the {river} built?",
                 "In what year was the {river} first bridged?"],
        "engineer": ["Who built the first bridge over the {river}?",
                     "Which engineer built the first bridge across the {river}?"],
        "bridge_town": ["Where was the first bridge over the {river} built?",
                        "At which town was the {river} first bridged?"],
    }
    if v["bridge_town"] != middle:
        questions["bridge_town_again"] = questions.pop("bridge_town")
        template = template.replace("{bridge_town}", "{bridge_town_again}")
        v["bridge_town_again"] = v["bridge_town"]
    return name, [template], v, questions, (missing, questions["engineer"])


def invention(rng, pool, title):
    name = title(lambda: f"{rng.choice(INVENTION_ADJECTIVES)} {rng.choice(pool['invention'])[0]}")
    adjective, noun = name.split(" ", 1)
    plural = dict(pool["invention"])[noun]
    inventor = full_name(rng, pool)
    year = rng.randint(1830, 1925)
    v = dict(invention=name, plural=f"{adjective} {plural}", inventor=inventor, surname=surname(inventor),
             year=year, town=rng.choice(pool["town"]), job=rng.choice(INVENTOR_JOBS), users=rng.choice(USERS),
             count=rng.choice(COUNTS), birth=year - rng.randint(25, 50), death=year + rng.randint(5, 40))
    v["count_ten"] = v["count"]
    templates = [
        "The {invention} was invented in {year} by {inventor}, a {job} from {town}. {surname} sold the "
        "design to a local firm, which made {count} of them in the first year.",
        "{inventor} built the first {invention} in {town} in {year}. At the time, {surname} worked as a "
        "{job}, and the device was meant to help {users} in bad weather.",
        "In {year}, a {job} named {inventor} ({birth}–{death}) designed the {invention} in a workshop in "
        "{town}, a small river port. Within ten years, {count_ten} had been sold.",
    ]
    missing = [
        "The {invention} was first built in {year} by {inventor} in {town}. The device was meant to help "
        "{users}, and {count} were made in the first year.",
    ]
    questions = {
        "inventor": ["Who invented the {invention}?", "Who designed the first {invention}?",
                     "Which person built the first {invention}?"],
        "year": ["When was the {invention} invented?", "In which year was the first {invention} built?"],
        "town": ["Where was the {invention} invented?", "In which town was the first {invention} made?"],
        "job": ["What did {inventor} work as?", "What was the job of the inventor of the {invention}?"],
        "count": ["How many {plural} were made in the first year?"],
        "count_ten": ["How many {plural} had been sold within ten years?",
                      "How many {plural} were sold in the first ten years?"],
        "users": ["Who was the {invention} meant to help?", "For whom was the {invention} designed?"],
        "birth": ["When was {inventor} born?", "In what year was {inventor} born?"],
        "death": ["When did {inventor} die?", "In which year did {inventor} die?"],
    }
    return name[0].upper() + name[1:], templates, v, questions, (missing, questions["job"])


def person(rng, pool, title):
    name = title(lambda: full_name(rng, pool))
    year = rng.randint(1820, 1900)
    v = dict(person=name, surname=surname(name), town=rng.choice(pool["town"]), year=year,
             job=rng.choice(WRITER_JOBS), n=rng.choice(BOOK_COUNTS), topic=rng.choice(TOPICS),
             title=rng.choice(pool["book"]), pubyear=year + rng.randint(25, 45), ryear=year + rng.randint(24, 40),
             death=year + rng.randint(50, 90), copies=rng.choice(COPIES))
    v["home"] = v["town_again"] = v["town"]
    v["a"] = "an" if v["job"][0] in "aeiou" else "a"
    templates = [
        "{person} was born in {town} in {year}. After training as {a} {job}, {surname} wrote {n} books about "
        "{topic}. The best known of them, “{title}”, appeared in {pubyear}.",
        "Born in {year} in {town}, {person} worked as {a} {job} before turning to writing. {surname}'s "
        "best-known book, {title}, was published in {pubyear} and sold {copies} copies in its first year.",
        "{person} ({year}–{death}) was {a} {job} from {home}, a mill town in the north. {surname} is "
        "remembered for {title} ({pubyear}), a book about {topic}.",
        "{person} was born in {town} in {year}. After many years abroad as {a} {job}, {surname} returned to "
        "{town_again} in {ryear} and wrote a book about {topic} there.",
    ]
    missing = [
        "{person} was born in {town} and trained as {a} {job}. {surname} later wrote {n} books about {topic}, "
        "of which “{title}” ({pubyear}) is the best known.",
    ]
    questions = {
        "town": ["Where was {person} born?", "In which town was {person} born?"],
        "home": ["Which town was {person} from?", "Where did {person} come from?"],
        "year": ["When was {person} born?", "In what year was {person} born?"],
        "death": ["When did {person} die?", "In which year did {person} die?"],
        "job": ["What was {person}'s profession?", "What did {person} work as?"],
        "n": ["How many books did {person} write?", "How many books about {topic} did {person} write?"],
        "topic": ["What did {person} write about?", "What subject did {person} write about?"],
        "title": ["What is {person}'s best-known book?", "Which book is {person} best known for?"],
        "pubyear": ["When did {title} appear?", "In which year was {title} published?"],
        "copies": ["How many copies of {title} were sold in its first year?"],
        "ryear": ["When did {person} return to {town}?", "In what year did {person} come back to {town}?"],
        "town_again": ["Where did {person} return to in {ryear}?", "To which town did {person} return in {ryear}?"],
    }
    return name, templates, v, questions, (missing, questions["year"])


def town(rng, pool, title):
    name = title(lambda: rng.choice(pool["town"]))
    year = rng.randint(1180, 1620)
    v = dict(town=name, river=f"River {rng.choice(pool['river'])}", year=year, year2=rng.randint(1850, 1950),
             pop=rng.choice(POPULATIONS), specialty=rng.choice(SPECIALTIES), year_again=year,
             famous_since=rng.randint(1840, 1900))
    v["recorded"] = v["year"]
    templates = [
        "{town} is a market town on the {river}. It received its charter in {year}, and by {year2} its "
        "population had reached {pop}. The town is best known for its {specialty}.",
        "{town} grew up around a ford on the {river}. The town was granted a charter in {year}, and the "
        "first market was held there in the spring of {year_again}. Today about {pop_today} people live in "
        "{town}, which is known for its {specialty}.",
        "Standing on the {river}, {town} was first recorded in {recorded} as a fishing village. It has been "
        "famous for its {specialty} since {famous_since}, when the railway reached the town.",
    ]
    v["pop_today"] = v["pop"]
    missing = [
        "{town} is a market town on the {river}. It received its charter in {year}, and it is best known "
        "for its {specialty}. Its church tower can be seen from far across the valley.",
    ]
    questions = {
        "river": ["On which river does {town} stand?", "Which river flows through {town}?"],
        "year": ["When did {town} receive its charter?", "In which year was {town} granted a charter?"],
        "year_again": ["When was the first market held in {town}?", "In what year was {town}'s first market held?"],
        "pop": ["What was the population of {town} in {year2}?", "How many people lived in {town} by {year2}?"],
        "pop_today": ["How many people live in {town} today?", "What is the population of {town} today?"],
        "specialty": ["What is {town} known for?", "What is {town} best known for?"],
        "recorded": ["When was {town} first recorded?", "In what year was {town} first recorded?"],
        "famous_since": ["Since when has {town} been famous for its {specialty}?"],
    }
    return name, templates, v, questions, (missing, questions["pop_today"])


def cafe(rng, pool, title):
    name = title(lambda: rng.choice(pool["cafe"]) if rng.random() < 0.6
                 else f"Café {rng.choice(pool['surname'])}")
    year = rng.randint(1890, 1960)
    v = dict(cafe=name, year=year, street=rng.choice(pool["street"]), town=rng.choice(pool["town"]),
             owner=full_name(rng, pool), dish=rng.choice(DISHES), seats=rng.choice(SEATS),
             year2=year + rng.randint(5, 30), customers=rng.choice(CUSTOMERS))
    templates = [
        "{cafe} opened in {year} on {street} in {town}. Its owner, {owner}, served {dish}, and within a "
        "year the café had {seats} seats.",
        "In {year}, {owner} opened {cafe} in a narrow building on {street}, {town}. It became famous for "
        "its {dish}, and by {year2} it was serving {customers} customers a day.",
        "{cafe}, on {street} in {town}, was opened in {year} by {owner}, a former ship's cook. Visitors "
        "came from far away for its {dish}.",
    ]
    missing = [
        "{cafe} opened in {year} on {street} in {town}. It served {dish}, and within a year it had "
        "{seats} seats.",
    ]
    questions = {
        "year": ["When did {cafe} open?", "In which year did {cafe} open?"],
        "street": ["On which street was {cafe}?", "What street was {cafe} on?"],
        "town": ["In which town did {cafe} open?", "In what town was {cafe}?"],
        "owner": ["Who owned {cafe}?", "Who opened {cafe}?"],
        "dish": ["What did {cafe} serve?", "Which dish was {cafe} known for?"],
        "seats": ["How many seats did {cafe} have after a year?"],
        "customers": ["How many customers a day was {cafe} serving by {year2}?"],
    }
    return name, templates, v, questions, (missing, questions["owner"])


def club(rng, pool, title):
    name = title(lambda: f"{rng.choice(pool['town'])} {rng.choice(CLUBS)[0]}")
    members_noun = dict(CLUBS)[" ".join(name.split(" ")[-2:])]
    year = rng.randint(1860, 1930)
    v = dict(club=name, members_noun=members_noun, year=year, founders=rng.choice(FOUNDERS),
             venue=rng.choice(pool["venue"]), leader=full_name(rng, pool), year2=year + rng.randint(20, 60),
             members=rng.choice(MEMBERS), tenure=rng.choice(TENURES))
    v["venue_again"] = v["venue"]
    templates = [
        "The {club} was formed in {year} by {founders} {members_noun} who met in {venue}. Its first leader "
        "was {leader}, and by {year2} it had {members} members.",
        "Founded in {year}, the {club} first met in {venue}. After years in other halls, it returned to "
        "{venue_again} in {year2}. Its first leader, {leader}, held the post for {tenure}.",
        "The {club} began in {year}, when {leader} gathered {founders} {members_noun} in {venue}. By {year2}, "
        "the club had grown to {members} members and had won its first county prize.",
    ]
    missing = [
        "The {club} was formed in {year} by {founders} {members_noun} who met in {venue}. By {year2} it had "
        "{members} members.",
    ]
    questions = {
        "year": ["When was the {club} formed?", "In what year was the {club} founded?"],
        "founders": ["How many {members_noun} formed the {club}?", "How many {members_noun} started the {club}?"],
        "venue": ["Where did the {club} first meet?", "Where were the first meetings of the {club} held?"],
        "venue_again": ["Where did the {club} return to in {year2}?"],
        "leader": ["Who was the first leader of the {club}?", "Who led the {club} at first?"],
        "members": ["How many members did the {club} have by {year2}?"],
        "tenure": ["How long did {leader} lead the {club}?", "For how long was {leader} the leader of the {club}?"],
    }
    return name, templates, v, questions, (missing, questions["leader"])


KINDS = [("company", company), ("river", river), ("invention", invention), ("person", person),
         ("town", town), ("cafe", cafe), ("club", club)]
PLACEHOLDER = re.compile(r"\{(\w+)\}")
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def render(template, values):
    """The context, and for each placeholder the start of its first occurrence."""
    text, starts, last = [], {}, 0
    length = 0
    for match in PLACEHOLDER.finditer(template):
        literal = template[last:match.start()]
        text.append(literal)
        length += len(literal)
        value = str(values[match.group(1)])
        starts.setdefault(match.group(1), length)
        text.append(value)
        length += len(value)
        last = match.end()
    text.append(template[last:])
    return "".join(text), starts


def paragraph(rng, pool, kind, make, used, n_questions, unanswerable, next_id):
    def title(draw):
        for _ in range(10000):
            candidate = draw()
            if candidate not in used:
                used.add(candidate)
                return candidate
        raise RuntimeError("entity pool exhausted")

    name, templates, values, questions, (missing, impossible) = make(rng, pool, title)
    # The variants that leave a fact out also serve answerable paragraphs now and then, so
    # that the template alone does not tell whether a question can be answered.
    template = rng.choice(missing if unanswerable or rng.random() < 0.15 else templates)
    context, starts = render(template, values)
    while len(SENTENCE_END.findall(context)) < 4 and (
            len(context.split()) < 40 or (len(context.split()) < 62 and rng.random() < 0.3)):
        filler = rng.choice([f for f in FILLERS[kind] if f not in context])
        context += " " + filler
    assert 30 <= len(context.split()) <= 80 and 2 <= len(SENTENCE_END.findall(context)) <= 4, context
    keys = [k for k in questions if k in starts]
    for key in keys:
        assert template.count("{" + key + "}") == 1, (key, template)
    forced = [k for k in keys if k.endswith("_again")]
    n_answerable = n_questions - (1 if unanswerable else 0)
    chosen = forced + rng.sample([k for k in keys if k not in forced], n_answerable - len(forced))
    chosen.sort(key=lambda k: starts[k])
    qas = []
    for key in chosen:
        text = str(values[key])
        start = starts[key]
        assert context[start:start + len(text)] == text, (context, text, start)
        qas.append({"question": rng.choice(questions[key]).format(**values),
                    "answers": [{"text": text, "answer_start": start}], "is_impossible": False})
    if unanswerable:
        qas.insert(rng.randint(0, len(qas)), {"question": rng.choice(impossible).format(**values),
                                              "answers": [], "is_impossible": True})
    for qa in qas:
        qa_id = next_id()
        qa_ordered = {"id": qa_id, "question": qa["question"], "answers": qa["answers"],
                      "is_impossible": qa["is_impossible"]}
        qa.clear()
        qa.update(qa_ordered)
    return {"title": name, "paragraphs": [{"context": context, "qas": qas}]}


def make_split(split, rng, n_paragraphs, unanswerable_share):
    pool = POOLS[split]
    # Three questions a paragraph on average: pairs of paragraphs get 3+3, 2+4 or 4+2.
    counts = [3] * n_paragraphs
    for i in range(0, n_paragraphs - 1, 2):
        pick = rng.random()
        if pick < 0.6:
            counts[i], counts[i + 1] = (2, 4) if pick < 0.3 else (4, 2)
    n_unanswerable = round(unanswerable_share * sum(counts))
    unanswerable = set(rng.sample(range(n_paragraphs), min(n_unanswerable, n_paragraphs)))
    order = []
    while len(order) < n_paragraphs:
        block = list(KINDS)
        rng.shuffle(block)
        order.extend(block)
    used, serial = set(), [0]

    def next_id():
        serial[0] += 1
        return f"tsq-{split}-{serial[0]:04d}"

    data = [paragraph(rng, pool, kind, make, used, counts[i], i in unanswerable, next_id)
            for i, (kind, make) in enumerate(order[:n_paragraphs])]
    return {"version": "v2.0", "data": data}


def check(dataset):
    ids = set()
    for article in dataset["data"]:
        for par in article["paragraphs"]:
            for qa in par["qas"]:
                assert qa["id"] not in ids, qa["id"]
                ids.add(qa["id"])
                assert qa["is_impossible"] == (not qa["answers"]), qa
                for answer in qa["answers"]:
                    start, text = answer["answer_start"], answer["text"]
                    assert par["context"][start:start + len(text)] == text, (par["context"], answer)


def check_disjoint(train_set):
    """No validation entity is in a train pool or anywhere in a train context."""
    train, validation = POOLS["train"], POOLS["validation"]
    text = "\n".join(par["context"] + "\n" + "\n".join(qa["question"] for qa in par["qas"])
                     for article in train_set["data"] for par in article["paragraphs"])
    for key in train:
        shared = set(map(str, train[key])) & set(map(str, validation[key]))
        assert not shared, (key, shared)
        for entity in validation[key]:
            entity = entity[0] if isinstance(entity, tuple) else entity
            assert not re.search(r"\b" + re.escape(entity) + r"\b", text), (key, entity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=120, help="training paragraphs (default 120)")
    parser.add_argument("--validation", type=int, default=30, help="validation paragraphs (default 30)")
    parser.add_argument("--seed", type=int, default=1887)
    parser.add_argument("--unanswerable", type=float, default=0.1,
                        help="share of unanswerable validation questions (default 0.1)")
    parser.add_argument("--train-unanswerable", type=float, default=0.1,
                        help="share of unanswerable training questions (default 0.1)")
    args = parser.parse_args()
    datasets = {}
    for offset, (split, count, share) in enumerate((("train", args.train, args.train_unanswerable),
                                                    ("validation", args.validation, args.unanswerable))):
        datasets[split] = make_split(split, random.Random(args.seed * 1000 + offset), count, share)
        check(datasets[split])
    check_disjoint(datasets["train"])
    os.makedirs(args.out_dir, exist_ok=True)
    for split, dataset in datasets.items():
        with open(os.path.join(args.out_dir, f"{split}.json"), "w", encoding="utf-8", newline="\n") as out:
            out.write(json.dumps(dataset, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
