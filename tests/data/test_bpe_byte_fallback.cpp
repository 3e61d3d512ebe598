#include <boost/test/unit_test.hpp>

#include "data/bpe_tokenizer.h"
#include "tests/data/tokenizer_test_support.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

BOOST_AUTO_TEST_SUITE(test_bpe_byte_fallback)

namespace {

using ftrain::data::BpeTokenizer;
using ftrain::data::EncodeOptions;
using ftrain::data::testing::contains;
using ftrain::data::testing::error_message;
using ftrain::data::testing::TempDir;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A tiny Llama 2 style tokenizer whose ids follow by hand from the rules: "▁" marks a
// space, "é" is not a token but both of its bytes (C3 A9) are, "ü" (C3 BC) has one byte
// token missing, and "!" is only a byte token.
Json llama_vocab() {
  return {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"<0xC3>", 3}, {"<0xA9>", 4}, {"<0x21>", 5}, {"▁", 6},
          {"a", 7},     {"b", 8},   {"c", 9},    {"▁a", 10},    {"ab", 11},    {"▁ab", 12},   {"abc", 13}};
}

Json special(const char* content, int id) {
  return {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},   {"normalized", false}, {"special", true}};
}

Json llama_json() {
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", {special("<unk>", 0), special("<s>", 1), special("</s>", 2)}},
          {"normalizer",
           {{"type", "Sequence"},
            {"normalizers",
             {{{"type", "Prepend"}, {"prepend", "▁"}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
          {"pre_tokenizer", nullptr},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder",
           {{"type", "Sequence"},
            {"decoders",
             {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", "<unk>"},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"ignore_merges", false},
            {"vocab", llama_vocab()},
            {"merges", {"▁ a", "a b", "▁a b", "ab c"}}}}};
}

// The older layout: no normalizer, a Metaspace pre-tokenizer and decoder.
Json metaspace_json(const std::string& prepend_scheme, bool split) {
  Json document = llama_json();
  document["normalizer"] = nullptr;
  document["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", prepend_scheme}, {"split", split}};
  document["decoder"] = {{"type", "Sequence"},
                         {"decoders",
                          {{{"type", "ByteFallback"}},
                           {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", prepend_scheme}}}}};
  return document;
}

BpeTokenizer load(const TempDir& dir, const Json& document) {
  dir.write("tokenizer.json", document.dump());
  return BpeTokenizer::from_directory(dir.path());
}

void check_json_error(const std::function<void(Json&)>& corrupt, std::initializer_list<std::string> fragments) {
  TempDir dir;
  Json document = llama_json();
  corrupt(document);
  const auto file = dir.write("tokenizer.json", document.dump());
  const std::string message = error_message([&] { BpeTokenizer::from_directory(dir.path()); });
  BOOST_TEST_CONTEXT("message: " << message) {
    BOOST_TEST(contains(message, file.string()));
    for (const std::string& fragment : fragments) BOOST_TEST(contains(message, fragment), fragment);
  }
}

}  // namespace

// ---- encoding, worked by hand ----

BOOST_AUTO_TEST_CASE(spaces_become_metaspace_and_merge) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, llama_json());
  BOOST_TEST(tokenizer.kind() == "SentencePiece-style BPE");
  BOOST_TEST(!tokenizer.byte_level());
  BOOST_TEST(tokenizer.encode("ab") == (Ids{12}));         // ▁ a b -> ▁a b -> ▁ab
  BOOST_TEST(tokenizer.encode("abc") == (Ids{12, 9}));     // "ab c" cannot apply once ▁ab formed
  BOOST_TEST(tokenizer.encode("a  b") == (Ids{10, 6, 6, 8}));
  BOOST_TEST(tokenizer.encode(" ") == (Ids{6, 6}));        // the prepended ▁ and the space
  BOOST_TEST(tokenizer.encode("").empty());                // nothing to prepend to
  const std::vector<std::string> pieces = {"▁a▁▁b"};
  BOOST_TEST(tokenizer.pre_tokenize("a  b") == pieces, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(characters_outside_the_vocabulary_fall_back_to_bytes) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, llama_json());
  BOOST_TEST(tokenizer.encode("é") == (Ids{6, 3, 4}));  // <0xC3> <0xA9>
  BOOST_TEST(tokenizer.encode("a!") == (Ids{10, 5}));
  BOOST_TEST(tokenizer.encode("ü") == (Ids{6, 0}));    // <0xBC> is missing: unknown
  BOOST_TEST(tokenizer.encode("üü") == (Ids{6, 0}));   // unknowns fused
  // An unknown is written when a known character follows or the word ends, so byte
  // tokens that come between stay in front of it.
  BOOST_TEST(tokenizer.encode("üé") == (Ids{6, 3, 4, 0}));
  BOOST_TEST(tokenizer.encode("x!x") == (Ids{6, 5, 0}));
  // Bytes that are not UTF-8 are characters of their own, so they fall back too.
  BOOST_TEST(tokenizer.encode("\xC3") == (Ids{6, 3}));
}

BOOST_AUTO_TEST_CASE(unknowns_without_fusing_or_byte_fallback) {
  TempDir unfused_dir, no_fallback_dir;
  Json document = llama_json();
  document["model"]["fuse_unk"] = false;
  BOOST_TEST(load(unfused_dir, document).encode("üüaü") == (Ids{6, 0, 0, 7, 0}));
  document["model"]["byte_fallback"] = false;
  BOOST_TEST(load(no_fallback_dir, document).encode("é!") == (Ids{6, 0, 0}));
}

BOOST_AUTO_TEST_CASE(added_tokens_split_the_text_before_normalization) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, llama_json());
  // Each stretch between added tokens is normalized alone, so "b" gains its own ▁.
  BOOST_TEST(tokenizer.encode("a<s>b") == (Ids{10, 1, 6, 8}));
  BOOST_TEST(tokenizer.encode("</s></s>") == (Ids{2, 2}));
}

BOOST_AUTO_TEST_CASE(template_puts_bos_first) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, llama_json());
  const auto single = tokenizer.encode_with_specials("ab");
  BOOST_TEST(single.ids == (Ids{1, 12}));
  BOOST_TEST(single.token_type_ids == (Ids{0, 0}));
  const auto pair = tokenizer.encode_with_specials("ab", "c");
  BOOST_TEST(pair.ids == (Ids{1, 12, 1, 6, 9}));
  BOOST_TEST(pair.token_type_ids == (Ids{0, 0, 1, 1, 1}));
  const auto plain = tokenizer.encode_with_specials("ab", EncodeOptions{.add_special_tokens = false});
  BOOST_TEST(plain.ids == (Ids{12}));
  const auto cut = tokenizer.encode_with_specials("a a a", EncodeOptions{.max_length = 3});
  BOOST_TEST(cut.ids == (Ids{1, 10, 10}));
  BOOST_TEST(tokenizer.special_ids().bos.value_or(-1) == 1);
  BOOST_TEST(tokenizer.special_ids().eos.value_or(-1) == 2);
  BOOST_TEST(tokenizer.eos_id().value_or(-1) == 2);
  BOOST_TEST(tokenizer.special_ids().unk.value_or(-1) == 0);
}

// ---- decoding ----

BOOST_AUTO_TEST_CASE(decoder_turns_metaspace_and_bytes_back_into_text) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, llama_json());
  BOOST_TEST(tokenizer.decode(Ids{12, 6, 3, 4}) == "ab é");  // the first space is stripped
  BOOST_TEST(tokenizer.decode(Ids{3}) == "\xEF\xBF\xBD");      // half of "é"
  BOOST_TEST(tokenizer.decode(Ids{3, 3, 7}) == "\xEF\xBF\xBD\xEF\xBF\xBD" "a");  // one U+FFFD per byte
  BOOST_TEST(tokenizer.decode(Ids{1, 12, 2}) == "<s> ab</s>");
  BOOST_TEST(tokenizer.decode(Ids{1, 12, 2}, true) == "ab");
  BOOST_TEST(tokenizer.decode(Ids{12, 99, -1, 9}) == "abc");  // ids with no token are skipped
  for (const char* text : {"ab c", "é a", "a  b", "  a"}) {
    BOOST_TEST(tokenizer.decode(tokenizer.encode(text)) == text, text);
  }
}

BOOST_AUTO_TEST_CASE(no_decoder_joins_tokens_with_spaces) {
  TempDir dir;
  Json document = llama_json();
  document["decoder"] = nullptr;
  BOOST_TEST(load(dir, document).decode(Ids{12, 6, 3}) == "▁ab ▁ <0xC3>");
}

// ---- the Metaspace pre-tokenizer ----

BOOST_AUTO_TEST_CASE(metaspace_prepend_schemes) {
  TempDir always_dir, first_dir, never_dir;
  const BpeTokenizer always = load(always_dir, metaspace_json("always", true));
  const BpeTokenizer first = load(first_dir, metaspace_json("first", true));
  const BpeTokenizer never = load(never_dir, metaspace_json("never", true));
  BOOST_TEST(always.encode("ab") == (Ids{12}));
  BOOST_TEST(always.encode(" ab") == (Ids{12}));  // already starts with ▁: nothing added
  BOOST_TEST(always.encode("a<s>b") == (Ids{10, 1, 6, 8}));
  BOOST_TEST(first.encode("a<s>b") == (Ids{10, 1, 8}));  // only the stretch at the start
  BOOST_TEST(never.encode("ab") == (Ids{11}));
  const std::vector<std::string> split = {"▁a", "▁", "▁b"};
  BOOST_TEST(always.pre_tokenize("a  b") == split, boost::test_tools::per_element());
  BOOST_TEST(always.decode(Ids{10, 6, 3, 4}) == "a é");  // the first token's ▁ goes
  BOOST_TEST(never.decode(Ids{10, 6}) == " a ");
}

BOOST_AUTO_TEST_CASE(metaspace_without_split_merges_across_words) {
  TempDir split_dir, whole_dir;
  Json document = metaspace_json("always", true);
  document["model"]["vocab"]["a▁"] = 14;
  document["model"]["vocab"]["▁a▁"] = 15;
  document["model"]["vocab"]["▁a▁b"] = 16;
  document["model"]["merges"] = {"▁ a", "a ▁", "▁a ▁", "▁a▁ b"};
  const BpeTokenizer split = load(split_dir, document);
  BOOST_TEST(split.encode("a b") == (Ids{10, 6, 8}));
  document["pre_tokenizer"]["split"] = false;
  const BpeTokenizer whole = load(whole_dir, document);
  BOOST_TEST(whole.encode("a b") == (Ids{16}));  // ▁ a ▁ b -> ▁a ▁ b -> ▁a▁ b -> ▁a▁b
}

// ---- errors name the file and the key ----

BOOST_AUTO_TEST_CASE(unsupported_configurations_are_refused) {
  check_json_error([](Json& d) { d["normalizer"]["normalizers"][0] = {{"type", "NFKC"}}; },
                   {"normalizer.normalizers[0].type", "NFKC"});
  check_json_error([](Json& d) { d["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", "(unclosed"}}; },
                   {"normalizer.normalizers[1].pattern.Regex", "PCRE2"});
  check_json_error([](Json& d) { d["normalizer"]["normalizers"][1]["pattern"] = {{"String", ""}}; },
                   {"normalizer.normalizers[1].pattern", "non-empty"});
  check_json_error([](Json& d) { d["normalizer"]["normalizers"][0].erase("prepend"); },
                   {"normalizer.normalizers[0]", "\"prepend\""});
  check_json_error([](Json& d) { d["decoder"]["decoders"][1] = {{"type", "ByteLevel"}}; },
                   {"decoder.decoders[1].type", "ByteLevel"});
  check_json_error([](Json& d) { d["decoder"]["decoders"][1] = {{"type", "CTC"}}; }, {"decoder.decoders[1].type", "CTC"});
  check_json_error([](Json& d) { d["decoder"]["decoders"][3]["content"] = "ab"; },
                   {"decoder.decoders[3].content", "one character"});
  check_json_error([](Json& d) { d["pre_tokenizer"] = {{"type", "Metaspace"}}; }, {"pre_tokenizer.replacement"});
  check_json_error(
      [](Json& d) {
        d["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "sometimes"}};
      },
      {"pre_tokenizer.prepend_scheme", "sometimes"});
  check_json_error(
      [](Json& d) {
        d["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"add_prefix_space", false}};
      },
      {"pre_tokenizer.add_prefix_space"});
  check_json_error([](Json& d) { d["model"]["unk_token"] = "<nope>"; }, {"model.unk_token", "<nope>"});
  check_json_error([](Json& d) { d["post_processor"]["single"][0]["SpecialToken"]["id"] = "<t>"; },
                   {"post_processor.single[0]", "<t>"});
  check_json_error([](Json& d) { d["post_processor"]["special_tokens"]["<s>"]["ids"][0] = 99; },
                   {"post_processor.special_tokens[\"<s>\"].ids[0]", "99"});
  check_json_error([](Json& d) { d["post_processor"]["pair"].erase(3); }, {"post_processor.pair", "$B"});
  check_json_error([](Json& d) { d["post_processor"] = {{"type", "Unknown"}}; }, {"post_processor.type", "Unknown"});
}

BOOST_AUTO_TEST_SUITE_END()  // test_bpe_byte_fallback
