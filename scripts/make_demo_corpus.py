#!/usr/bin/env python3
"""Writes the demo corpus: short product and restaurant reviews generated from
templates with a fixed seed. It is synthetic text, made so that a fresh clone can
fine-tune without any download; its regularities let a tiny model's loss fall
visibly within a few hundred steps.

usage: make_demo_corpus.py OUT.jsonl [--documents N] [--seed S]
Each line is {"text": "...", "label": "positive" | "negative"}.
"""
import argparse
import json
import random

SUBJECTS = ["The pasta", "The coffee", "This laptop", "The hotel room", "The service", "This phone",
            "The soup", "The delivery", "This book", "The concert", "The pizza", "This camera",
            "The staff", "The movie", "This jacket", "The battery", "The dessert", "The app"]
POSITIVE = ["was wonderful", "exceeded my expectations", "was absolutely delicious", "worked perfectly",
            "was fast and friendly", "felt like great value", "was a real pleasure", "was excellent",
            "made my day", "was better than I hoped"]
NEGATIVE = ["was terrible", "fell apart after a week", "was cold and bland", "kept crashing",
            "was slow and rude", "felt like a waste of money", "was a huge disappointment", "was awful",
            "ruined my evening", "was worse than I feared"]
POSITIVE_TAILS = ["I would happily come back.", "Highly recommended!", "Five stars from me.",
                  "I will buy it again.", "Thanks to everyone involved."]
NEGATIVE_TAILS = ["I will not be back.", "Avoid it if you can.", "One star, sadly.",
                  "I asked for a refund.", "Never again."]
CONNECTORS = ["and", "but honestly", "and frankly", "although"]


def review(rng: random.Random) -> dict:
    positive = rng.random() < 0.5
    words = POSITIVE if positive else NEGATIVE
    tails = POSITIVE_TAILS if positive else NEGATIVE_TAILS
    first = f"{rng.choice(SUBJECTS)} {rng.choice(words)}"
    parts = [first]
    if rng.random() < 0.6:
        parts.append(f"{rng.choice(CONNECTORS)} {rng.choice(SUBJECTS).lower()} {rng.choice(words)}")
    text = " ".join(parts) + ". " + rng.choice(tails)
    if rng.random() < 0.3:
        text += f" Price paid: ${rng.randint(3, 250)}.{rng.randint(0, 99):02d}."
    return {"text": text, "label": "positive" if positive else "negative"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--documents", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.output, "w", encoding="utf-8") as out:
        for _ in range(args.documents):
            out.write(json.dumps(review(rng)) + "\n")


if __name__ == "__main__":
    main()
