#include <boost/test/unit_test.hpp>

#include "data/wordpiece_tokenizer.h"
#include "tests/data/tokenizer_test_support.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

BOOST_AUTO_TEST_SUITE(test_wordpiece_tokenizer)

namespace {

using ftrain::data::EncodeOptions;
using ftrain::data::WordPieceTokenizer;
using ftrain::data::testing::contains;
using ftrain::data::testing::error_message;
using ftrain::data::testing::TempDir;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;
using namespace std::string_view_literals;

// A tiny BERT vocabulary in which the ids follow by hand from the rules.
const std::vector<std::string> kVocab = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "hello", ",", "!",  "world",
    "##s",   "cafe",  "café",  "日",    "本",     "a",  "##a",   ".",     "'",     "t", "don", "$"};

Json vocab_object() {
  Json vocab = Json::object();
  for (size_t id = 0; id < kVocab.size(); ++id) vocab[kVocab[id]] = id;
  return vocab;
}

Json special(const char* content, int id) {
  return {{"id", id},        {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

Json bert_json(Json strip_accents = nullptr, bool lowercase = true) {
  return {{"version", "1.0"},
          {"truncation", {{"max_length", 128}, {"strategy", "LongestFirst"}, {"stride", 0}}},
          {"padding", nullptr},
          {"added_tokens",
           {special("[PAD]", 0), special("[UNK]", 1), special("[CLS]", 2), special("[SEP]", 3), special("[MASK]", 4)}},
          {"normalizer",
           {{"type", "BertNormalizer"},
            {"clean_text", true},
            {"handle_chinese_chars", true},
            {"strip_accents", std::move(strip_accents)},
            {"lowercase", lowercase}}},
          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
          {"post_processor", {{"type", "BertProcessing"}, {"sep", {"[SEP]", 3}}, {"cls", {"[CLS]", 2}}}},
          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
          {"model",
           {{"type", "WordPiece"},
            {"unk_token", "[UNK]"},
            {"continuing_subword_prefix", "##"},
            {"max_input_chars_per_word", 100},
            {"vocab", vocab_object()}}}};
}

WordPieceTokenizer load(const TempDir& dir, const Json& document) {
  dir.write("tokenizer.json", document.dump());
  return WordPieceTokenizer::from_directory(dir.path());
}

std::string vocab_txt() {
  std::string text;
  for (const std::string& token : kVocab) text += token + "\n";
  return text;
}

void check_json_error(const std::function<void(Json&)>& corrupt, std::initializer_list<std::string> fragments) {
  TempDir dir;
  Json document = bert_json();
  corrupt(document);
  const auto file = dir.write("tokenizer.json", document.dump());
  const std::string message = error_message([&] { WordPieceTokenizer::from_directory(dir.path()); });
  BOOST_TEST_CONTEXT("message: " << message) {
    BOOST_TEST(contains(message, file.string()));
    for (const std::string& fragment : fragments) BOOST_TEST(contains(message, fragment), fragment);
  }
}

}  // namespace

// ---- WordPiece, worked by hand ----

BOOST_AUTO_TEST_CASE(longest_match_first_then_continuations) {
  TempDir dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  BOOST_TEST(tokenizer.kind() == "WordPiece");
  BOOST_TEST(tokenizer.encode("unaffable") == (Ids{5, 6, 7}));
  BOOST_TEST(tokenizer.encode("worlds") == (Ids{11, 12}));
  BOOST_TEST(tokenizer.encode("unx") == (Ids{1}));          // "##x" is no token: the whole word is unknown
  BOOST_TEST(tokenizer.encode("hello unx world") == (Ids{8, 1, 11}));
  BOOST_TEST(tokenizer.encode("aaa") == (Ids{17, 18, 18}));
  BOOST_TEST(tokenizer.encode("").empty());
  BOOST_TEST(tokenizer.encode(" \t\n").empty());
}

BOOST_AUTO_TEST_CASE(words_longer_than_the_limit_are_unknown) {
  TempDir dir, short_dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  BOOST_TEST(tokenizer.encode(std::string(100, 'a')).size() == 100u);
  BOOST_TEST(tokenizer.encode(std::string(101, 'a')) == (Ids{1}));
  Json document = bert_json(false);
  document["model"]["max_input_chars_per_word"] = 4;
  const WordPieceTokenizer limited = load(short_dir, document);
  BOOST_TEST(limited.encode("aaaa") == (Ids{17, 18, 18, 18}));
  BOOST_TEST(limited.encode("aaaaa") == (Ids{1}));
  BOOST_TEST(limited.encode("café") == (Ids{14}));  // four characters in five bytes: characters count
}

BOOST_AUTO_TEST_CASE(punctuation_and_whitespace_split_words) {
  TempDir dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  BOOST_TEST(tokenizer.encode("Hello, World!") == (Ids{8, 9, 11, 10}));
  BOOST_TEST(tokenizer.encode("don't") == (Ids{22, 20, 21}));
  BOOST_TEST(tokenizer.encode("$5") == (Ids{23, 1}));  // every ASCII symbol is punctuation
  const std::vector<std::string> words = {"hello", ",", "wo", "$", "rld", "«", "x", "»"};
  BOOST_TEST(tokenizer.pre_tokenize("Hello,\u3000wo$rld «x»") == words, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(normalizer_steps) {
  TempDir dir, keep_accents_dir, cased_dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  BOOST_TEST(tokenizer.normalize("\xC3\x87" "a\u0301 Va\tbien") == "ca va bien");  // Ç, a + combining acute
  BOOST_TEST(tokenizer.normalize("a\x00" "b\x01\u200b\u00a0c\ufffd"sv) == "ab c");  // controls go, NBSP is a space
  BOOST_TEST(tokenizer.normalize("x日本y") == "x 日  本 y");
  BOOST_TEST(tokenizer.normalize("\u0130") == "i");  // İ -> i + U+0307, whose mark is then stripped
  BOOST_TEST(tokenizer.encode("Café") == (Ids{13}));
  BOOST_TEST(tokenizer.encode("hello\x00\tworld"sv) == (Ids{8, 11}));
  BOOST_TEST(tokenizer.encode("日本") == (Ids{15, 16}));
  // strip_accents given explicitly overrides "as lowercase".
  const WordPieceTokenizer keep_accents = load(keep_accents_dir, bert_json(false));
  BOOST_TEST(keep_accents.encode("CAFÉ") == (Ids{14}));
  BOOST_TEST(keep_accents.normalize("\u0130") == "i\u0307");
  const WordPieceTokenizer cased = load(cased_dir, bert_json(nullptr, false));
  BOOST_TEST(cased.encode("Hello hello") == (Ids{1, 8}));
  BOOST_TEST(cased.normalize("Café") == "Café");  // strip_accents follows lowercase: off
}

BOOST_AUTO_TEST_CASE(added_tokens_are_found_in_the_raw_text) {
  TempDir dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  BOOST_TEST(tokenizer.encode("[CLS] hello [SEP]") == (Ids{2, 8, 3}));
  BOOST_TEST(tokenizer.encode("[cls]") == (Ids{1, 1, 1}));  // not normalized, so case matters: "[", "cls", "]"
  BOOST_TEST(tokenizer.encode("hello[MASK]world") == (Ids{8, 4, 11}));
}

// ---- the template ----

BOOST_AUTO_TEST_CASE(cls_and_sep_with_token_types) {
  TempDir dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  const auto single = tokenizer.encode_with_specials("hello world");
  BOOST_TEST(single.ids == (Ids{2, 8, 11, 3}));
  BOOST_TEST(single.token_type_ids == (Ids{0, 0, 0, 0}));
  const auto pair = tokenizer.encode_with_specials("hello", "world!");
  BOOST_TEST(pair.ids == (Ids{2, 8, 3, 11, 10, 3}));
  BOOST_TEST(pair.token_type_ids == (Ids{0, 0, 0, 1, 1, 1}));
  const auto bare = tokenizer.encode_with_specials("hello", "world", EncodeOptions{.add_special_tokens = false});
  BOOST_TEST(bare.ids == (Ids{8, 11}));
  BOOST_TEST(bare.token_type_ids == (Ids{0, 1}));
  // Longest first: "hello , hello" (3) against "world" (1) with room for 2 texts' ids.
  const auto cut = tokenizer.encode_with_specials("hello, hello", "world", EncodeOptions{.max_length = 5});
  BOOST_TEST(cut.ids == (Ids{2, 8, 3, 11, 3}));
  BOOST_CHECK_THROW(tokenizer.encode_with_specials("a", "b", EncodeOptions{.max_length = 2}), std::invalid_argument);
  BOOST_TEST(tokenizer.special_ids().cls.value_or(-1) == 2);
  BOOST_TEST(tokenizer.special_ids().sep.value_or(-1) == 3);
  BOOST_TEST(tokenizer.special_ids().pad.value_or(-1) == 0);
  BOOST_TEST(tokenizer.special_ids().mask.value_or(-1) == 4);
  BOOST_TEST(!tokenizer.special_ids().bos.has_value());
}

// ---- decoding ----

BOOST_AUTO_TEST_CASE(decoder_joins_continuations_and_cleans_up) {
  TempDir dir, raw_dir;
  const WordPieceTokenizer tokenizer = load(dir, bert_json());
  const Ids ids = {2, 5, 6, 7, 9, 11, 12, 10, 3};
  BOOST_TEST(tokenizer.decode(ids) == "[CLS] unaffable, worlds! [SEP]");
  BOOST_TEST(tokenizer.decode(ids, true) == "unaffable, worlds!");
  BOOST_TEST(tokenizer.decode(Ids{12, 8, 999, -4, 19}) == "##s hello.");  // a leading "##" stays
  Json document = bert_json();
  document["decoder"]["cleanup"] = false;
  BOOST_TEST(load(raw_dir, document).decode(ids, true) == "unaffable , worlds !");
}

// ---- vocab.txt ----

BOOST_AUTO_TEST_CASE(vocab_txt_with_bert_defaults) {
  TempDir dir;
  dir.write("vocab.txt", vocab_txt());
  const WordPieceTokenizer tokenizer = WordPieceTokenizer::from_directory(dir.path());
  TempDir json_dir;
  const WordPieceTokenizer reference = load(json_dir, bert_json());
  for (const char* text : {"Hello, World!", "unaffable CAFÉ", "[CLS] 日本 [SEP]", "don't $5"}) {
    BOOST_TEST(tokenizer.encode(text) == reference.encode(text), text);
    BOOST_TEST(tokenizer.encode_with_specials(text, "x").ids == reference.encode_with_specials(text, "x").ids, text);
  }
  BOOST_TEST(tokenizer.vocab_size() == static_cast<int32_t>(kVocab.size()));
  BOOST_TEST(tokenizer.token_to_id("##able").value_or(-1) == 7);
  BOOST_TEST(tokenizer.id_to_token(14).value_or("") == "café");
}

BOOST_AUTO_TEST_CASE(vocab_txt_options_from_tokenizer_config) {
  TempDir dir;
  dir.write("vocab.txt", vocab_txt());
  dir.write("tokenizer_config.json", R"({"do_lower_case": false, "strip_accents": true, "pad_token": "[MASK]"})");
  const WordPieceTokenizer tokenizer = WordPieceTokenizer::from_directory(dir.path());
  BOOST_TEST(tokenizer.encode("Hello hello") == (Ids{1, 8}));
  BOOST_TEST(tokenizer.encode("café") == (Ids{13}));
  BOOST_TEST(tokenizer.special_ids().pad.value_or(-1) == 4);
}

// ---- errors name the file and the key ----

BOOST_AUTO_TEST_CASE(bad_vocab_txt) {
  TempDir dir;
  const auto vocab = dir.write("vocab.txt", "[UNK]\na\nb\na\n");
  std::string message = error_message([&] { WordPieceTokenizer::from_directory(dir.path()); });
  BOOST_TEST(contains(message, vocab.string()));
  BOOST_TEST(contains(message, "line 4 repeats \"a\" of line 2"), message);
  dir.write("vocab.txt", "a\nb\n");
  message = error_message([&] { WordPieceTokenizer::from_directory(dir.path()); });
  BOOST_TEST((contains(message, vocab.string()) && contains(message, "[UNK]")), message);
  dir.write("vocab.txt", vocab_txt());
  const auto config = dir.write("tokenizer_config.json", R"({"do_lower_case": "yes"})");
  message = error_message([&] { WordPieceTokenizer::from_directory(dir.path()); });
  BOOST_TEST((contains(message, config.string()) && contains(message, "do_lower_case")), message);
  dir.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  message = error_message([&] { WordPieceTokenizer::from_directory(dir.path()); });
  BOOST_TEST((contains(message, config.string()) && contains(message, "eos_token \"</s>\"")), message);
  TempDir empty;
  message = error_message([&] { WordPieceTokenizer::from_directory(empty.path()); });
  BOOST_TEST(contains(message, "vocab.txt"), message);
}

BOOST_AUTO_TEST_CASE(unsupported_configurations_are_refused) {
  check_json_error([](Json& d) { d["normalizer"] = {{"type", "NFD"}}; }, {"normalizer.type", "NFD"});
  check_json_error([](Json& d) { d["normalizer"]["lowercase"] = "no"; }, {"normalizer.lowercase"});
  check_json_error([](Json& d) { d["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"pre_tokenizer", "Whitespace"});
  check_json_error([](Json& d) { d["pre_tokenizer"] = nullptr; }, {"pre_tokenizer", "BertPreTokenizer"});
  check_json_error([](Json& d) { d["decoder"] = {{"type", "BPEDecoder"}}; }, {"decoder.type", "BPEDecoder"});
  check_json_error([](Json& d) { d["model"]["unk_token"] = "<unk>"; }, {"model.unk_token", "<unk>"});
  check_json_error([](Json& d) { d["model"]["vocab"]["##s"] = 1; }, {"model.vocab", "id 1"});
  check_json_error([](Json& d) { d["model"]["max_input_chars_per_word"] = -1; }, {"model.max_input_chars_per_word"});
  check_json_error([](Json& d) { d["post_processor"]["cls"] = {"[CLS]", 99}; }, {"post_processor.cls[1]", "99"});
  check_json_error([](Json& d) { d["added_tokens"][0].erase("content"); }, {"added_tokens[0]", "content"});
  // An id far beyond the tokens would size the id -> token table (2,147,483,000 ids: about 80 GB).
  check_json_error([](Json& d) { d["model"]["vocab"]["world"] = 2147483000; },
                   {"model.vocab[\"world\"]", "id 2147483000", "far beyond the"});
}

BOOST_AUTO_TEST_SUITE_END()  // test_wordpiece_tokenizer
