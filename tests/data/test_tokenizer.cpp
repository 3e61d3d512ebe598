#include <boost/test/unit_test.hpp>

#include "data/bpe_tokenizer.h"
#include "data/tokenizer.h"
#include "data/wordpiece_tokenizer.h"
#include "tests/data/tokenizer_test_support.h"

#include <nlohmann/json.hpp>

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

BOOST_AUTO_TEST_SUITE(test_tokenizer)

namespace {

namespace fs = std::filesystem;
using ftrain::data::BpeTokenizer;
using ftrain::data::load_tokenizer;
using ftrain::data::SpecialTokenTemplate;
using ftrain::data::Tokenizer;
using ftrain::data::truncate_longest_first;
using ftrain::data::WordPieceTokenizer;
using ftrain::data::testing::contains;
using ftrain::data::testing::error_message;
using ftrain::data::testing::TempDir;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

Json byte_level_json() {
  return {{"added_tokens", Json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"<|endoftext|>", 3}}}, {"merges", {"a b"}}}}};
}

Json sentencepiece_json() {
  Json document = byte_level_json();
  document["model"]["vocab"] = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"▁", 3}, {"a", 4}, {"▁a", 5}};
  document["model"]["merges"] = {"▁ a"};
  document["model"]["unk_token"] = "<unk>";
  document["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}};
  document["decoder"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}};
  return document;
}

Json wordpiece_json() {
  return {{"normalizer", {{"type", "BertNormalizer"}, {"lowercase", true}}},
          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
          {"decoder", {{"type", "WordPiece"}}},
          {"model",
           {{"type", "WordPiece"},
            {"unk_token", "[UNK]"},
            {"vocab", {{"[UNK]", 0}, {"[CLS]", 1}, {"[SEP]", 2}, {"a", 3}, {"##b", 4}}}}}};
}

std::string load_error(const fs::path& dir) {
  return error_message([&] { load_tokenizer(dir); });
}

void check_refused(const fs::path& dir, std::initializer_list<std::string> fragments) {
  const std::string message = load_error(dir);
  BOOST_TEST_CONTEXT("message: " << message) {
    BOOST_TEST(!message.empty());
    for (const std::string& fragment : fragments) BOOST_TEST(contains(message, fragment), fragment);
  }
}

}  // namespace

// ---- truncation and templates ----

BOOST_AUTO_TEST_CASE(longest_first_truncation) {
  const auto cut = [](size_t first_length, size_t second_length, size_t max_length) {
    Ids first(first_length, 1), second(second_length, 2);
    truncate_longest_first(first, &second, max_length);
    return std::pair{first.size(), second.size()};
  };
  BOOST_TEST((cut(5, 3, 8) == std::pair<size_t, size_t>{5, 3}));   // fits
  BOOST_TEST((cut(10, 1, 6) == std::pair<size_t, size_t>{5, 1}));  // the longer one alone suffices
  BOOST_TEST((cut(1, 10, 6) == std::pair<size_t, size_t>{1, 5}));
  BOOST_TEST((cut(5, 4, 6) == std::pair<size_t, size_t>{3, 3}));  // both, to half each
  BOOST_TEST((cut(10, 8, 7) == std::pair<size_t, size_t>{4, 3}));  // the longer one gets the odd one
  BOOST_TEST((cut(8, 10, 7) == std::pair<size_t, size_t>{3, 4}));
  BOOST_TEST((cut(3, 3, 0) == std::pair<size_t, size_t>{0, 0}));
  Ids single = {1, 2, 3, 4};
  truncate_longest_first(single, nullptr, 2);
  BOOST_TEST(single == (Ids{1, 2}));
  Ids kept = {1, 2, 3, 4};
  const Ids expected = kept;
  truncate_longest_first(kept, nullptr, 7);
  BOOST_TEST((kept == expected));
}

BOOST_AUTO_TEST_CASE(template_without_special_tokens_marks_the_second_text) {
  const SpecialTokenTemplate plain;
  const Ids second = {3};
  const auto encoding = plain.apply(Ids{1, 2}, &second, true);
  BOOST_TEST(encoding.ids == (Ids{1, 2, 3}));
  BOOST_TEST(encoding.token_type_ids == (Ids{0, 0, 1}));
  BOOST_TEST(plain.added_count(false) == 0u);
  BOOST_TEST(plain.added_count(true) == 0u);
}

BOOST_AUTO_TEST_CASE(template_parts_repeat_and_carry_several_ids) {
  using Part = SpecialTokenTemplate::Part;
  const SpecialTokenTemplate custom({{Part::Kind::special, {7, 8}, 0}, {Part::Kind::first_text, {}, 0}},
                                    {{Part::Kind::first_text, {}, 2}, {Part::Kind::special, {9}, 3},
                                     {Part::Kind::second_text, {}, 4}, {Part::Kind::special, {9}, 5}});
  BOOST_TEST(custom.apply(Ids{1}, nullptr, true).ids == (Ids{7, 8, 1}));
  const Ids second = {5, 6};
  const auto pair = custom.apply(Ids{1}, &second, true);
  BOOST_TEST(pair.ids == (Ids{1, 9, 5, 6, 9}));
  BOOST_TEST(pair.token_type_ids == (Ids{2, 3, 4, 4, 5}));
  BOOST_TEST(custom.apply(Ids{1}, &second, false).token_type_ids == (Ids{2, 4, 4}));
  BOOST_TEST(custom.added_count(false) == 2u);
  BOOST_TEST(custom.added_count(true) == 2u);
}

// ---- load_tokenizer picks the kind ----

BOOST_AUTO_TEST_CASE(kind_follows_tokenizer_json) {
  TempDir byte_level, sentencepiece, wordpiece, untyped;
  byte_level.write("tokenizer.json", byte_level_json().dump());
  sentencepiece.write("tokenizer.json", sentencepiece_json().dump());
  wordpiece.write("tokenizer.json", wordpiece_json().dump());
  Json document = wordpiece_json();
  document["model"].erase("type");
  document["model"]["max_input_chars_per_word"] = 100;
  untyped.write("tokenizer.json", document.dump());

  const auto gpt2 = load_tokenizer(byte_level.path());
  BOOST_TEST(gpt2->kind() == "byte-level BPE");
  BOOST_TEST(dynamic_cast<const BpeTokenizer*>(gpt2.get()) != nullptr);
  BOOST_TEST(gpt2->encode("ab") == (Ids{2}));
  BOOST_TEST(gpt2->special_ids().eos.value_or(-1) == 3);
  const auto llama = load_tokenizer(sentencepiece.path());
  BOOST_TEST(llama->kind() == "SentencePiece-style BPE");
  BOOST_TEST(llama->encode("a a") == (Ids{5, 5}));
  BOOST_TEST(llama->decode(Ids{5, 5}) == "a a");
  BOOST_TEST(llama->special_ids().bos.value_or(-1) == 1);
  const auto bert = load_tokenizer(wordpiece.path());
  BOOST_TEST(bert->kind() == "WordPiece");
  BOOST_TEST(dynamic_cast<const WordPieceTokenizer*>(bert.get()) != nullptr);
  BOOST_TEST(bert->encode("AB") == (Ids{3, 4}));
  BOOST_TEST(load_tokenizer(untyped.path())->kind() == "WordPiece");
}

BOOST_AUTO_TEST_CASE(kind_follows_the_files_without_tokenizer_json) {
  TempDir bert, gpt2;
  bert.write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n##b\n");
  BOOST_TEST(load_tokenizer(bert.path())->kind() == "WordPiece");
  BOOST_TEST(load_tokenizer(bert.path())->encode_with_specials("ab").ids == (Ids{2, 5, 6, 3}));
  gpt2.write("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  gpt2.write("merges.txt", "#version: 0.2\na b\n");
  BOOST_TEST(load_tokenizer(gpt2.path())->kind() == "byte-level BPE");
  BOOST_TEST(load_tokenizer(gpt2.path())->encode("abab") == (Ids{2, 2}));
}

BOOST_AUTO_TEST_CASE(special_tokens_follow_tokenizer_config) {
  TempDir dir;
  dir.write("tokenizer.json", sentencepiece_json().dump());
  dir.write("tokenizer_config.json",
            R"({"bos_token": {"content": "</s>", "lstrip": false}, "eos_token": "<s>", "unk_token": null,
                "pad_token": "<unk>", "model_max_length": 4096})");
  const auto tokenizer = load_tokenizer(dir.path());
  BOOST_TEST(tokenizer->special_ids().bos.value_or(-1) == 2);
  BOOST_TEST(tokenizer->special_ids().eos.value_or(-1) == 1);
  BOOST_TEST(!tokenizer->special_ids().unk.has_value());
  BOOST_TEST(tokenizer->special_ids().pad.value_or(-1) == 0);
  const auto config = dir.write("tokenizer_config.json", R"({"mask_token": "<mask>"})");
  check_refused(dir.path(), {config.string(), "mask_token", "<mask>"});
  dir.write("tokenizer_config.json", R"({"cls_token": 5})");
  check_refused(dir.path(), {config.string(), "cls_token"});
}

// ---- and refuses what it cannot read, naming the file ----

BOOST_AUTO_TEST_CASE(unsupported_directories_are_refused) {
  TempDir empty, sentencepiece_model, unigram, word_level, untyped, lonely_vocab;
  check_refused(empty.path() / "absent", {(empty.path() / "absent").string(), "does not exist"});
  check_refused(empty.path(), {empty.path().string(), "tokenizer.json", "vocab.txt"});
  const auto model_file = sentencepiece_model.write("tokenizer.model", "\x0a\x05");
  check_refused(sentencepiece_model.path(), {model_file.string(), "SentencePiece", "tokenizer.json"});
  const auto unigram_file = unigram.write(
      "tokenizer.json", R"({"model": {"type": "Unigram", "unk_id": null, "vocab": [["<unk>", 0.0]]}, "pre_tokenizer": null})");
  check_refused(unigram.path(), {unigram_file.string(), "model.unk_id"});
  const auto word_level_file = word_level.write(
      "tokenizer.json", R"({"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}, "pre_tokenizer": null})");
  check_refused(word_level.path(), {word_level_file.string(), "model.type", "WordLevel", "Unigram"});
  const auto untyped_file = untyped.write("tokenizer.json", R"({"model": {"vocab": {"a": 0}}})");
  check_refused(untyped.path(), {untyped_file.string(), "model", "type"});
  lonely_vocab.write("vocab.json", R"({"a": 0})");
  check_refused(lonely_vocab.path(), {(lonely_vocab.path() / "merges.txt").string()});
  const auto not_json = unigram.write("tokenizer.json", "{\"model\": ");
  check_refused(unigram.path(), {not_json.string(), "not valid JSON"});
  const auto file = empty.write("file", "");
  check_refused(file, {file.string(), "not a directory"});
}

BOOST_AUTO_TEST_SUITE_END()  // test_tokenizer
