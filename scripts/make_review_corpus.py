#!/usr/bin/env python3
"""Writes a labelled sentiment corpus for `make demo`: short reviews of restaurants,
hotels, gadgets, books, films and apps, GENERATED from the templates and word lists in
this file with a fixed seed. They are not real reviews. The set exists so that a fresh
clone can fine-tune a classifier without any download.

What makes it more than keyword spotting:
  * negation flips polarity ("was not worth it", "was far from comfortable", "did not
    let me down") and sometimes does not ("could not have been more helpful");
  * most reviews are mixed: an aspect of the other polarity is conceded ("Although the
    room was cramped, ...", "..., but the staff were rude") and the label follows the
    clause after "but", the main clause, or the closing verdict ("Overall, ...");
  * a quarter of the sentiment words never occur in train.tsv, only in validation.tsv
    and test.tsv: a model has to know from pretraining that "dreadful" is negative;
  * a small share of labels (--noise, default 3%) is flipped at random, as in any
    hand-labelled set, so accuracy tops out a little below 1.

usage: make_review_corpus.py OUT_DIR [--train N] [--validation N] [--test N] [--seed S] [--noise P]
Writes OUT_DIR/train.tsv, validation.tsv and test.tsv with the header `text<TAB>label`,
label `positive` or `negative`.
"""
import argparse
import os
import random

# Each domain: what is reviewed (as object and as subject), its aspects, neutral
# context sentences, and how one says "I would come back / buy it again".
DOMAINS = {
    "restaurant": {
        "items": ["this restaurant", "this place", "the bistro", "this diner", "the new noodle bar"],
        "aspects": ["the food", "the pasta", "the soup", "the steak", "the dessert", "the coffee",
                    "the bread", "the wine list", "the service", "our waiter", "the staff",
                    "the dining room", "the portions", "the menu", "the curry", "the pizza crust"],
        "context": ["We went there on a Friday night.", "We were a group of six.",
                    "I had lunch there with a colleague.", "We booked a table for two.",
                    "It is a short walk from the station."],
        "return": ["go back", "eat there again", "book a table again"],
    },
    "hotel": {
        "items": ["this hotel", "the guesthouse", "this resort", "the hostel", "the inn"],
        "aspects": ["the room", "the bed", "the breakfast", "the reception", "the staff",
                    "the bathroom", "the pool", "the view", "the location", "the wifi",
                    "the check-in", "the housekeeping", "the lobby", "the air conditioning"],
        "context": ["We stayed three nights in May.", "I was there for a conference.",
                    "We stayed there on our way to the coast.", "I booked it through my employer.",
                    "We arrived late in the evening."],
        "return": ["stay there again", "book it again", "go back"],
    },
    "gadget": {
        "items": ["this phone", "the laptop", "this camera", "the headphones", "this blender",
                  "the vacuum cleaner", "this smartwatch", "the printer"],
        "aspects": ["the battery", "the screen", "the sound", "the build quality", "the keyboard",
                    "the charger", "the setup", "the manual", "the software", "the customer support",
                    "the packaging", "the design", "the speaker", "the motor"],
        "context": ["I bought it two months ago.", "It was a birthday present.",
                    "I use it every day for work.", "I replaced my old one with it.",
                    "I ordered it online."],
        "return": ["buy it again", "order another one", "buy from this brand again"],
    },
    "book": {
        "items": ["this novel", "the book", "this memoir", "the sequel", "this cookbook"],
        "aspects": ["the plot", "the writing", "the ending", "the characters", "the dialogue",
                    "the pacing", "the translation", "the first chapter", "the illustrations",
                    "the narrator", "the recipes", "the cover"],
        "context": ["I read it over a long weekend.", "My book club picked it.",
                    "I listened to the audio version.", "A friend lent it to me.",
                    "I read it on a long train journey."],
        "return": ["read more by this author", "read it again", "buy the next one"],
    },
    "film": {
        "items": ["this film", "the movie", "this documentary", "the series", "the remake"],
        "aspects": ["the acting", "the script", "the soundtrack", "the ending", "the lead actor",
                    "the cinematography", "the story", "the special effects", "the humour",
                    "the second half", "the dialogue", "the editing"],
        "context": ["I saw it at a late screening.", "We watched it at home on Sunday.",
                    "I went in knowing nothing about it.", "It was showing at a small cinema.",
                    "I watched it with my parents."],
        "return": ["watch it again", "see the next one", "watch more from this director"],
    },
    "app": {
        "items": ["this app", "the game", "this budgeting tool", "the fitness app", "this editor"],
        "aspects": ["the interface", "the latest update", "the sync", "the notifications",
                    "the tutorial", "the performance", "the subscription", "the search",
                    "the offline mode", "the support team", "the login", "the menus"],
        "context": ["I have used it for about a year.", "I installed it on two devices.",
                    "A colleague recommended it.", "I switched to it from a rival.",
                    "I tried the free version first."],
        "return": ["keep using it", "renew my subscription", "install it again"],
    },
}

# Sentiment adjectives that read naturally after "was" for any aspect.
POSITIVE_WORDS = ["excellent", "superb", "wonderful", "fantastic", "great", "lovely", "delightful",
                  "impressive", "outstanding", "pleasant", "reliable", "charming", "brilliant",
                  "enjoyable", "terrific", "marvellous", "first-rate", "flawless", "splendid",
                  "solid", "remarkable", "polished", "exceptional", "fabulous", "top-notch",
                  "satisfying", "admirable", "stellar"]
NEGATIVE_WORDS = ["terrible", "awful", "dreadful", "disappointing", "mediocre", "poor", "lousy",
                  "sloppy", "unreliable", "frustrating", "dismal", "shoddy", "abysmal", "tedious",
                  "pathetic", "atrocious", "subpar", "unbearable", "lacklustre", "horrible",
                  "miserable", "inferior", "appalling", "dire", "woeful", "annoying", "clumsy",
                  "underwhelming"]
# Verbs with the aspect as object ("I loved the plot") or as subject ("the plot let me down").
POSITIVE_OBJECT_VERBS = ["loved", "adored", "enjoyed", "appreciated", "was impressed by", "was delighted with"]
NEGATIVE_OBJECT_VERBS = ["hated", "disliked", "loathed", "was annoyed by", "was fed up with", "regretted"]
POSITIVE_SUBJECT_VERBS = ["won me over", "exceeded my expectations", "made my day", "blew me away"]
NEGATIVE_SUBJECT_VERBS = ["let me down", "ruined it for me", "drove me mad", "fell short"]
INTENSIFIERS = ["", "", "", "very ", "really ", "truly ", "quite ", "rather ", "genuinely ",
                "absolutely ", "pretty "]


def verdicts(positive: bool, item: str, again: str) -> list[str]:
    """Closing sentences that settle the overall opinion; several use negation."""
    if positive:
        return [f"I would recommend {item} to anyone.", "Highly recommended.",
                f"I will definitely {again}.", "Worth every penny.", "No complaints at all.",
                f"I would not hesitate to {again}.", "Nothing to complain about.",
                f"I can't wait to {again}.", "Five stars.", f"I would happily {again}.",
                f"You will not regret choosing {item}.", "It was money well spent."]
    return [f"I would not recommend {item}.", "Not worth the money.", f"I will not {again}.",
            "Save your money.", f"I regret choosing {item}.", "Never again.",
            f"I can't recommend {item}.", "One star.", f"I have no wish to {again}.",
            "What a waste of money.", f"Do not bother with {item}.", "I asked for a refund."]


class Lexicon:
    """The sentiment words a split may use: train sees three quarters of each list."""

    def __init__(self, positive: list[str], negative: list[str]):
        self.words = {True: positive, False: negative}


def split_lexicons(seed: int) -> tuple[Lexicon, Lexicon]:
    rng = random.Random(seed * 7919 + 1)
    seen, unseen = {}, {}
    for polarity, words in ((True, POSITIVE_WORDS), (False, NEGATIVE_WORDS)):
        shuffled = words[:]
        rng.shuffle(shuffled)
        cut = len(shuffled) * 3 // 4
        seen[polarity], unseen[polarity] = shuffled[:cut], shuffled[cut:]
    train = Lexicon(seen[True], seen[False])
    # Held-out splits draw from every word, so some of their reviews hinge on unseen ones.
    held_out = Lexicon(seen[True] + unseen[True] + unseen[True], seen[False] + unseen[False] + unseen[False])
    return train, held_out


def clause(rng: random.Random, lexicon: Lexicon, aspect: str, positive: bool) -> str:
    """A clause about one aspect whose polarity is `positive`, in one of several forms."""
    form = rng.random()
    was = "were" if aspect.endswith("s") else "was"
    plain = lambda p: rng.choice(INTENSIFIERS) + rng.choice(lexicon.words[p])  # noqa: E731
    if form < 0.40:
        return f"{aspect} {was} {plain(positive)}"
    if form < 0.52:  # negated adjective of the opposite polarity
        word = rng.choice(lexicon.words[not positive])
        pattern = rng.choice(["{a} {was} not {w}", "{a} {was} far from {w}", "{a} {was} anything but {w}",
                              "{a} {was} never {w}", "{a} {was}n't {w} at all", "nobody would call {a} {w}"])
        return pattern.format(a=aspect, w=word, was=was)
    if form < 0.58:  # negation that does not flip
        if positive:
            word = rng.choice(lexicon.words[True])
            return rng.choice([f"{aspect} could not have been more {word}", f"I have never seen {aspect} so {word}"])
        word = rng.choice(lexicon.words[False])
        return rng.choice([f"{aspect} could not have been more {word}", f"I have never seen {aspect} so {word}"])
    if form < 0.74:
        verb = rng.choice(POSITIVE_OBJECT_VERBS if positive else NEGATIVE_OBJECT_VERBS)
        return f"I {verb} {aspect}"
    if form < 0.84:  # negated verb of the opposite polarity
        if positive:
            return f"{aspect} " + rng.choice(["did not let me down", "never let me down", "did not disappoint",
                                              "never disappointed", "did not fall short"])
        return f"I {rng.choice(['did not', 'could not'])} {rng.choice(['enjoy', 'love', 'appreciate'])} {aspect}"
    verb = rng.choice(POSITIVE_SUBJECT_VERBS if positive else NEGATIVE_SUBJECT_VERBS)
    return f"{aspect} {verb}"


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def review(rng: random.Random, lexicon: Lexicon, positive: bool) -> str:
    domain = DOMAINS[rng.choice(sorted(DOMAINS))]
    item = rng.choice(domain["items"])
    aspects = rng.sample(domain["aspects"], 3)
    verdict = rng.choice(verdicts(positive, item, rng.choice(domain["return"])))
    kind = rng.random()
    parts = []
    if rng.random() < 0.25:
        parts.append(rng.choice(domain["context"]))
    if kind < 0.30:  # one-sided
        parts.append(sentence(clause(rng, lexicon, aspects[0], positive)))
        if rng.random() < 0.5:
            parts.append(sentence(clause(rng, lexicon, aspects[1], positive)))
        if rng.random() < 0.6:
            parts.append(verdict)
    elif kind < 0.55:  # contrast: the clause after "but" carries the opinion
        conceded = clause(rng, lexicon, aspects[0], not positive)
        decisive = clause(rng, lexicon, aspects[1], positive)
        parts.append(sentence(f"{conceded}, but {decisive}"))
        if rng.random() < 0.3:
            parts.append(verdict)
    elif kind < 0.75:  # concession: the main clause carries the opinion
        conceded = clause(rng, lexicon, aspects[0], not positive)
        decisive = clause(rng, lexicon, aspects[1], positive)
        opener = rng.choice(["although", "even though", "while"])
        if rng.random() < 0.5:
            parts.append(sentence(f"{opener} {conceded}, {decisive}"))
        else:
            parts.append(sentence(f"{decisive}, {opener} {conceded}"))
    else:  # opinions on both sides, the verdict decides
        first, second = rng.sample([positive, not positive], 2)
        parts.append(sentence(clause(rng, lexicon, aspects[0], first)))
        parts.append(sentence(clause(rng, lexicon, aspects[1], second)))
        parts.append(rng.choice(["Overall, ", "All in all, ", "In the end, ", "On balance, "])
                     + (verdict if verdict.startswith("I ") else verdict[0].lower() + verdict[1:]))
    return " ".join(parts)


def write_split(path: str, rng: random.Random, lexicon: Lexicon, count: int, noise: float) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("text\tlabel\n")
        for _ in range(count):
            positive = rng.random() < 0.5
            text = review(rng, lexicon, positive)
            if rng.random() < noise:
                positive = not positive
            out.write(f"{text}\t{'positive' if positive else 'negative'}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=3000, help="training reviews (default 3000)")
    parser.add_argument("--validation", type=int, default=256, help="validation reviews (default 256)")
    parser.add_argument("--test", type=int, default=512, help="test reviews (default 512)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--noise", type=float, default=0.03, help="share of labels flipped (default 0.03)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    train_lexicon, held_out_lexicon = split_lexicons(args.seed)
    for name, count, lexicon, offset in (("train", args.train, train_lexicon, 0),
                                          ("validation", args.validation, held_out_lexicon, 1),
                                          ("test", args.test, held_out_lexicon, 2)):
        rng = random.Random(args.seed * 1000 + offset)
        write_split(os.path.join(args.out_dir, f"{name}.tsv"), rng, lexicon, count, args.noise)


if __name__ == "__main__":
    main()
