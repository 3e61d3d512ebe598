"""ftrain's evaluation metrics against scikit-learn and seqeval.

Seeded random labels and predictions go through the metrics_dump tool, which counts them
on several shards, sums the count vectors as the evaluation's all-reduce does, and
prints the scores. Classification is compared with sklearn's accuracy, macro-F1 and
per-label scores; token classification with seqeval's default (conlleval-style)
entity precision, recall and F1, and its get_entities, on valid and invalid tag
sequences.
"""

import json
import os
import random
import subprocess
import warnings
from pathlib import Path

import pytest
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.metrics import recall_score as seqeval_recall
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

BUILD_DIR = Path(os.environ.get("FTRAIN_BUILD_DIR", Path(__file__).resolve().parents[3] / "build"))
METRICS_DUMP = BUILD_DIR / "tests" / "launch" / "eval" / "metrics_dump"

IGNORE = -100


def dump(request):
    result = subprocess.run([str(METRICS_DUMP)], input=json.dumps(request), capture_output=True, text=True,
                            timeout=60)
    return result


def ftrain_metrics(request):
    result = dump(request)
    assert result.returncode == 0, f"metrics_dump failed:\n{result.stderr}"
    return json.loads(result.stdout)


def random_classification(rng, num_labels, length):
    # Truth from a random subset of the labels, so some labels occur nowhere, some only
    # in the predictions; predictions are right with a random probability.
    used = rng.sample(range(num_labels), rng.randint(1, num_labels))
    hit_rate = rng.random()
    truth, predicted = [], []
    for _ in range(length):
        label = rng.choice(used)
        truth.append(IGNORE if rng.random() < 0.1 else label)
        predicted.append(label if rng.random() < hit_rate else rng.randrange(num_labels))
    return truth, predicted


@pytest.mark.parametrize("seed", range(120))
def test_classification_matches_sklearn(seed):
    rng = random.Random(seed)
    num_labels = rng.randint(2, 7)
    truth, predicted = random_classification(rng, num_labels, rng.randint(1, 300))
    shards = rng.randint(1, 4)
    ours = ftrain_metrics(dict(task="classification", num_labels=num_labels, shards=shards, truth=truth,
                               predicted=predicted))

    kept = [(t, p) for t, p in zip(truth, predicted) if t != IGNORE]
    if not kept:
        assert ours["accuracy"] == 0 and ours["macro_f1"] == 0
        return
    y_true = [t for t, _ in kept]
    y_pred = [p for _, p in kept]
    labels = list(range(num_labels))
    assert ours["counts"] == confusion_matrix(y_true, y_pred, labels=labels).ravel().tolist()
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert ours["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert ours["precision"] == pytest.approx(precision.tolist(), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall.tolist(), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1.tolist(), abs=1e-12)


SCHEMES = {
    "iob2": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
    "iobes": ["O"] + [f"{p}-{t}" for t in ("PER", "ORG") for p in "BIES"],
    "dashed_types": ["O", "B-GEO-LOC", "I-GEO-LOC", "B-GEO", "I-GEO"],
    "untyped": ["O", "B", "I"],
}


def valid_sentence(rng, names, length):
    # Entities of random types and lengths separated by O, tagged B I I ... (or with
    # E-/S- where the scheme has them).
    types = sorted({name[2:] for name in names if name != "O"})
    iobes = any(name.startswith("E") for name in names)
    tags = []
    while len(tags) < length:
        if rng.random() < 0.5:
            tags.append("O")
            continue
        kind = rng.choice(types)
        size = rng.randint(1, 4)
        prefix = (lambda p: p + "-" + kind) if kind else (lambda p: p)
        if iobes:
            span = [prefix("S")] if size == 1 else [prefix("B")] + [prefix("I")] * (size - 2) + [prefix("E")]
        else:
            span = [prefix("B")] + [prefix("I")] * (size - 1)
        tags.extend(span)
    return [names.index(tag) for tag in tags[:length]]


def random_corpus(rng, names):
    """Sentences of tag ids with sub-token positions (-100 in the truth) mixed in."""
    corruption = rng.choice([0.0, 0.05, 0.2, 0.5, 1.0])
    sentences = []
    for _ in range(rng.randint(1, 12)):
        length = rng.randint(0, 25)
        if rng.random() < 0.5:
            words = valid_sentence(rng, names, length)
        else:  # any tag anywhere: I- after O, E- without B-, type changes inside runs
            words = [rng.randrange(len(names)) for _ in range(length)]
        guesses = [rng.randrange(len(names)) if rng.random() < corruption else tag for tag in words]
        truth, predicted = [], []
        for tag, guess in zip(words, guesses):
            truth.append(tag)
            predicted.append(guess)
            while rng.random() < 0.2:
                truth.append(IGNORE)
                predicted.append(rng.randrange(len(names)))
        sentences.append(dict(truth=truth, predicted=predicted))
    return sentences


def seqeval_entities(tags):
    # seqeval names the type of an untyped tag "_" and ends an entity inclusively.
    return [[("" if kind == "_" else kind), begin, end + 1] for kind, begin, end in get_entities(tags)]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("seed", range(30))
def test_entities_match_seqeval(scheme, seed):
    names = SCHEMES[scheme]
    rng = random.Random(f"{scheme}/{seed}")
    sentences = random_corpus(rng, names)
    ours = ftrain_metrics(dict(task="entities", label_names=names, shards=rng.randint(1, 3), sentences=sentences))

    y_true, y_pred = [], []
    for sentence in sentences:
        kept = [(t, p) for t, p in zip(sentence["truth"], sentence["predicted"]) if t != IGNORE]
        y_true.append([names[t] for t, _ in kept])
        y_pred.append([names[p] for _, p in kept])

    assert ours["true_entities"] == [seqeval_entities(tags) for tags in y_true]
    assert ours["predicted_entities"] == [seqeval_entities(tags) for tags in y_pred]

    true_set = {(i, *e) for i, tags in enumerate(y_true) for e in get_entities(tags)}
    pred_set = {(i, *e) for i, tags in enumerate(y_pred) for e in get_entities(tags)}
    assert ours["counts"] == [len(true_set), len(pred_set), len(true_set & pred_set)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns where a score is undefined; both give 0
        assert ours["precision"] == pytest.approx(seqeval_precision(y_true, y_pred), abs=1e-12)
        assert ours["recall"] == pytest.approx(seqeval_recall(y_true, y_pred), abs=1e-12)
        assert ours["f1"] == pytest.approx(seqeval_f1(y_true, y_pred), abs=1e-12)


def test_random_corpora_exercise_the_hard_cases():
    # The comparison above means something only if the corpora hold partly right
    # predictions and the sequences seqeval reads leniently.
    scores, lenient = [], 0
    for scheme, names in SCHEMES.items():
        for seed in range(30):
            sentences = random_corpus(random.Random(f"{scheme}/{seed}"), names)
            scores.append(ftrain_metrics(dict(task="entities", label_names=names, sentences=sentences))["f1"])
            for sentence in sentences:
                words = [names[t] for t in sentence["truth"] if t != IGNORE]
                lenient += sum(cur.startswith("I") and prev == "O" for prev, cur in zip(["O"] + words, words))
    assert any(0 < f1 < 1 for f1 in scores)
    assert any(f1 == 1 for f1 in scores)
    assert lenient > 50


def test_label_name_without_a_tag_prefix_is_refused():
    result = dump(dict(task="entities", label_names=["O", "B-PER", "LOC"],
                       sentences=[dict(truth=[1, 2], predicted=[1, 2])]))
    assert result.returncode != 0
    assert "'LOC'" in result.stderr and "label_names" in result.stderr


# ---- SQuAD's exact match and F1, against torchmetrics' copy of the official script ----

SQUAD_PIECES = ["the", "The", "THE", "a", "A", "an", "An", "theory", "another", "an-", "a.", "(the)", "_the_",
                "thé", "théâtre", "Ἀθῆναι", "İstanbul", "STRASSE", "Zoë", "São", "1887", "1,200", "12:30",
                "don't", "“quoted”", "—", "!", "?", ",", ".", "'s", "\u00a0", "\u3000", "\t", "\n", "  ", "\u2009",
                "naïve", "Ångström", "x_y", "e\u0301", "日本", "½", "²", "-", "&", "[", "]"]


def random_text(rng, longest=8):
    return "".join(rng.choice(SQUAD_PIECES) + rng.choice(["", " ", " ", "  "]) for _ in range(rng.randint(0, longest)))


def squad_items(rng, count):
    items = []
    for _ in range(count):
        answers = [random_text(rng) for _ in range(rng.randint(0, 3))]
        prediction = rng.choice([random_text(rng), rng.choice(answers) if answers else "",
                                 (rng.choice(answers) if answers else "") + rng.choice([" the", ".", " extra words"])])
        items.append({"prediction": prediction, "answers": answers})
    return items


def test_squad_scores_match_torchmetrics():
    import importlib
    reference = importlib.import_module("torchmetrics.functional.text.squad")
    items = squad_items(random.Random(11), 600)
    ours = ftrain_metrics(dict(task="squad", items=items))
    for i, item in enumerate(items):
        gold = item["answers"] or [""]  # an unanswerable question's gold answer, as SQuAD v2 scores it
        assert ours["normalized"][i] == reference._normalize_text(item["prediction"]), item
        exact = max(float(reference._compute_exact_match_score(item["prediction"], g)) for g in gold)
        f1 = max(float(reference._compute_f1_score(item["prediction"], g)) for g in gold)
        assert ours["exact_match"][i] == exact, item
        assert ours["f1"][i] == pytest.approx(f1, rel=1e-6), item  # torchmetrics computes in float32
    assert 0.2 < sum(ours["exact_match"]) / len(items) < 0.8
    assert any(0 < f1 < 1 for f1 in ours["f1"])


# ---- ROUGE and BLEU of generated text, against rouge-score and sacreBLEU ----

TEXT_PIECES = ["the", "cat", "sat", "on", "a", "mat", "The", "CAT", "Cat's", "dog", "ran", "1,200", "3.5", "2020-21",
               "e-mail", "U.S.", "co-op", "(quoted)", "\"say\"", "it's", "&amp;", "&lt;b&gt;", "$100", "50%", "x/y",
               "naïve", "café", "Straße", "日本", "—", "...", "!", "?", ",", ".", ";", ":", "-", "--", "end.", "A.B.",
               "\t", "  ", "\n", "under_score", "hello-\nworld", "<skipped>", "#tag", "@user", "[x]", "{y}", "~z"]


def random_sentence(rng, longest=16):
    return " ".join(rng.choice(TEXT_PIECES) for _ in range(rng.randint(0, longest)))


def text_pairs(rng, count):
    pairs = []
    for _ in range(count):
        reference = random_sentence(rng)
        words = reference.split(" ")
        # Predictions that share words with the reference, in and out of order.
        prediction = " ".join(w for w in words if rng.random() < 0.7) + " " + random_sentence(rng, 4)
        pairs.append({"prediction": rng.choice([prediction, random_sentence(rng), reference]), "reference": reference})
    return pairs


def test_rouge_and_bleu_match_rouge_score_and_sacrebleu():
    import sacrebleu
    from rouge_score import rouge_scorer
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    pairs = text_pairs(random.Random(21), 400)
    ours = ftrain_metrics(dict(task="text", shards=3, pairs=pairs))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    tokenize = Tokenizer13a()
    stemming = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for pair, rouge, stemmed, tokens in zip(pairs, ours["rouge"], ours["rouge_stemmed"], ours["tokens_13a"]):
        expected = scorer.score(pair["reference"], pair["prediction"])
        assert rouge == pytest.approx([expected[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")], abs=1e-12), pair
        expected = stemming.score(pair["reference"], pair["prediction"])
        assert stemmed == pytest.approx([expected[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")], abs=1e-12), pair
        assert tokens == tokenize(pair["prediction"]), pair
    assert any(0 < r[1] < 1 for r in ours["rouge"]) and any(r[2] == 1 for r in ours["rouge"])
    bleu = sacrebleu.corpus_bleu([p["prediction"] for p in pairs], [[p["reference"] for p in pairs]])
    assert ours["bleu"] == pytest.approx(bleu.score, abs=1e-9)
    assert 5 < ours["bleu"] < 95
    # Few pairs: orders without any match take sacreBLEU's exponential smoothing.
    few = pairs[:3]
    ours_few = ftrain_metrics(dict(task="text", shards=2, pairs=few))["bleu"]
    assert ours_few == pytest.approx(sacrebleu.corpus_bleu([p["prediction"] for p in few],
                                                           [[p["reference"] for p in few]]).score, abs=1e-9)


STEMS = ["caress", "pony", "ti", "cat", "feed", "agre", "plaster", "bl", "motor", "s", "conflat", "troubl", "siz",
         "hop", "tann", "fall", "hiss", "fizz", "fail", "fil", "happ", "sk", "relat", "condit", "valen", "hesit",
         "digit", "conform", "radic", "differ", "vil", "analog", "vietnam", "predic", "oper", "feud", "decis",
         "hope", "callous", "formal", "sensitiv", "sensibl", "triplic", "form", "electr", "electric", "good",
         "revival", "allow", "infer", "airlin", "gyroscop", "adjust", "depend", "adopt", "homolog", "commun",
         "activ", "angular", "effect", "bowdler", "gener", "control", "roll", "rate", "ceas", "ye", "toy", "syzyg",
         "y", "by", "tre", "oat", "ivy", "orrer", "spi", "fli", "tri", "enjoy", "news", "inn", "out", "cann",
         "proc", "exc", "succ", "dy", "ly", "ty", "archaeolog", "hopefull", "fulli", "eye", "abl", "ozon", "wa"]
SUFFIXES = ["", "s", "es", "ies", "sses", "ed", "ied", "eed", "ing", "ings", "y", "ly", "ily", "ational", "tional",
            "enci", "anci", "izer", "bli", "abli", "alli", "entli", "eli", "ousli", "ization", "ation", "ator",
            "alism", "iveness", "fulness", "ousness", "aliti", "iviti", "biliti", "fulli", "logi", "icate", "ative",
            "alize", "iciti", "ical", "ful", "ness", "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement",
            "ment", "ent", "sion", "tion", "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e", "ll", "ness"]


def test_porter_stemmer_matches_nltk():
    from nltk.stem.porter import PorterStemmer
    rng = random.Random(33)
    words = sorted({stem + suffix for stem in STEMS for suffix in SUFFIXES} |
                   {"".join(rng.choice("aeiouybcdlmnrst") for _ in range(rng.randint(1, 12))) for _ in range(3000)} |
                   {"sky", "skies", "dying", "lying", "tying", "innings", "outings", "cannings", "howe", "proceed"})
    ours = ftrain_metrics(dict(task="stem", words=words))["stems"]
    reference = PorterStemmer()
    differing = [(w, o, reference.stem(w)) for w, o in zip(words, ours) if o != reference.stem(w)]
    assert not differing, f"{len(differing)} of {len(words)} differ, first: {differing[:5]}"
    assert sum(o != w for w, o in zip(words, ours)) > len(words) / 3, "most words should be stemmed"
