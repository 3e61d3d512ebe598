#include <boost/test/unit_test.hpp>

#include "data/bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>
#include <thread>
#include <vector>

BOOST_AUTO_TEST_SUITE(test_bpe_tokenizer)

namespace {

namespace fs = std::filesystem;
using ftrain::data::BpeTokenizer;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A directory of its own under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device random;
    path_ = fs::temp_directory_path() / ("ftrain_bpe_" + std::to_string(random()) + std::to_string(random()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
    return path_ / name;
  }

 private:
  fs::path path_;
};

// A tiny GPT-2 style vocabulary in which the ids follow by hand from the BPE rules.
// "Ġ" is the byte-level character for a space; "Ã" and "©" are the bytes of "é".
Json hand_vocab() {
  return {{"a", 0},  {"b", 1},   {"c", 2},  {"Ġ", 3},  {"ab", 4},  {"bc", 5},  {"abc", 6},
          {"Ġa", 7}, {"Ġab", 8}, {"<|endoftext|>", 9}, {"<unk>", 10}, {"Ã", 11}, {"©", 12}};
}
const std::vector<std::string> kHandMerges = {"a b", "b c", "ab c", "Ġ a", "Ġa b"};

Json tokenizer_json(Json merges, bool add_prefix_space = false) {
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens",
           {{{"id", 9},
             {"content", "<|endoftext|>"},
             {"single_word", false},
             {"lstrip", false},
             {"rstrip", false},
             {"normalized", false},
             {"special", true}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", hand_vocab()},
            {"merges", std::move(merges)}}}};
}

BpeTokenizer load(const TempDir& dir, const Json& document) {
  dir.write("tokenizer.json", document.dump());
  return BpeTokenizer::from_directory(dir.path());
}

// Every character of GPT-2's byte alphabet as a token, no merges: encoding is then the
// byte mapping alone, whatever order the bytes take in it.
BpeTokenizer load_byte_alphabet(const TempDir& dir) {
  Json vocab = Json::object();
  int32_t id = 0;
  const auto add_range = [&](char32_t first, char32_t last) {
    for (char32_t c = first; c <= last; ++c) {
      std::string utf8;
      if (c < 0x80) {
        utf8 += static_cast<char>(c);
      } else {
        utf8 += static_cast<char>(0xC0 | (c >> 6));
        utf8 += static_cast<char>(0x80 | (c & 0x3F));
      }
      vocab[utf8] = id++;
    }
  };
  add_range(0x21, 0x7E);
  add_range(0xA1, 0xAC);
  add_range(0xAE, 0x143);
  BOOST_REQUIRE_EQUAL(id, 256);
  vocab["<|endoftext|>"] = 256;
  Json document = tokenizer_json(Json::array());
  document["model"]["vocab"] = vocab;
  document["added_tokens"][0]["id"] = 256;
  return load(dir, document);
}

// The message of the runtime_error that loading dir throws ("" if none).
std::string load_error(const fs::path& dir) {
  try {
    BpeTokenizer::from_directory(dir);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

void check_error(const fs::path& dir, std::initializer_list<std::string> fragments) {
  const std::string message = load_error(dir);
  BOOST_TEST_CONTEXT("message: " << message) {
    BOOST_TEST(!message.empty());
    for (const std::string& fragment : fragments) BOOST_TEST(message.find(fragment) != std::string::npos, fragment);
  }
}

void check_json_error(const std::function<void(Json&)>& corrupt, std::initializer_list<std::string> fragments) {
  TempDir dir;
  Json document = tokenizer_json(kHandMerges);
  corrupt(document);
  const fs::path file = dir.write("tokenizer.json", document.dump());
  std::vector<std::string> all(fragments);
  BOOST_TEST_CONTEXT("expected " << fragments.begin()[0]) {
    const std::string message = load_error(dir.path());
    BOOST_TEST_CONTEXT("message: " << message) {
      BOOST_TEST(message.find(file.string()) != std::string::npos);
      for (const std::string& fragment : all) BOOST_TEST(message.find(fragment) != std::string::npos, fragment);
    }
  }
}

Ids encode(const BpeTokenizer& tokenizer, std::string_view text) { return tokenizer.encode(text); }

}  // namespace

// ---- the BPE rules, worked by hand on the tiny vocabulary ----

BOOST_AUTO_TEST_CASE(merges_apply_lowest_rank_first) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  BOOST_TEST(encode(tokenizer, "abc") == (Ids{6}));        // a b c -> ab c -> abc
  BOOST_TEST(encode(tokenizer, "bcab") == (Ids{5, 4}));    // "a b" (rank 0) before "b c" (rank 1)
  BOOST_TEST(encode(tokenizer, "cab") == (Ids{2, 4}));
  BOOST_TEST(encode(tokenizer, "abab") == (Ids{4, 4}));    // equal ranks: both, left first
  BOOST_TEST(encode(tokenizer, "aaa") == (Ids{0, 0, 0}));  // no rule for "a a"
  // Ġ a b: "a b" (rank 0) wins over "Ġ a" (rank 3), and "Ġ ab" is no rule.
  BOOST_TEST(encode(tokenizer, " ab") == (Ids{3, 4}));
  BOOST_TEST(encode(tokenizer, "ab abc") == (Ids{4, 3, 6}));
  BOOST_TEST(encode(tokenizer, "é") == (Ids{11, 12}));  // one token per byte
  BOOST_TEST(encode(tokenizer, "").empty());
}

BOOST_AUTO_TEST_CASE(merge_order_decides_the_result) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(Json::array({"b c", "a b"})));
  BOOST_TEST(encode(tokenizer, "abc") == (Ids{0, 5}));  // "b c" now ranks first
}

BOOST_AUTO_TEST_CASE(overlapping_equal_pairs_merge_from_the_left) {
  TempDir dir;
  Json document = tokenizer_json(Json::array({"a a"}));
  document["model"]["vocab"] = {{"a", 0}, {"aa", 1}};
  document["added_tokens"] = Json::array();
  const BpeTokenizer tokenizer = load(dir, document);
  BOOST_TEST(encode(tokenizer, "aaa") == (Ids{1, 0}));
  BOOST_TEST(encode(tokenizer, "aaaaa") == (Ids{1, 1, 0}));
}

BOOST_AUTO_TEST_CASE(merges_may_be_pairs_or_strings) {
  TempDir strings_dir, pairs_dir;
  Json pairs = Json::array();
  for (const std::string& merge : kHandMerges) {
    const size_t space = merge.find(' ');
    pairs.push_back({merge.substr(0, space), merge.substr(space + 1)});
  }
  const BpeTokenizer from_strings = load(strings_dir, tokenizer_json(kHandMerges));
  const BpeTokenizer from_pairs = load(pairs_dir, tokenizer_json(pairs));
  for (const char* text : {"abc", "bcab", " ab", "ab abc c a"}) {
    BOOST_TEST(encode(from_strings, text) == encode(from_pairs, text), text);
  }
}

BOOST_AUTO_TEST_CASE(added_tokens_are_cut_out_first) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  BOOST_TEST(encode(tokenizer, "a<|endoftext|>b") == (Ids{0, 9, 1}));
  BOOST_TEST(encode(tokenizer, "<|endoftext|><|endoftext|>") == (Ids{9, 9}));
  BOOST_TEST(tokenizer.eos_id().value_or(-1) == 9);
}

BOOST_AUTO_TEST_CASE(bytes_outside_the_vocabulary) {
  TempDir plain_dir, unk_dir, fused_dir;
  // Without an unknown token the byte is dropped, so "a" and "b" meet and merge.
  BOOST_TEST(encode(load(plain_dir, tokenizer_json(kHandMerges)), "axb") == (Ids{4}));
  Json document = tokenizer_json(Json::array({"a b"}));
  document["model"]["unk_token"] = "<unk>";
  BOOST_TEST(encode(load(unk_dir, document), "axxb") == (Ids{0, 10, 10, 1}));
  document["model"]["fuse_unk"] = true;
  BOOST_TEST(encode(load(fused_dir, document), "axxb") == (Ids{0, 10, 1}));
}

BOOST_AUTO_TEST_CASE(add_prefix_space_applies_to_each_stretch_of_text) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges, /*add_prefix_space=*/true));
  BOOST_TEST(encode(tokenizer, "ab") == (Ids{3, 4}));
  BOOST_TEST(encode(tokenizer, " ab") == (Ids{3, 4}));  // already has its space
  BOOST_TEST(encode(tokenizer, "ab<|endoftext|>ab") == (Ids{3, 4, 9, 3, 4}));
  BOOST_TEST(encode(tokenizer, "").empty());
}

BOOST_AUTO_TEST_CASE(gpt2_split) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  const std::vector<std::string> expected = {"Hello", " world", "'s", " ", " end", "!!", "\n", " 42", "\t"};
  BOOST_TEST(tokenizer.pre_tokenize("Hello world's  end!!\n 42\t") == expected, boost::test_tools::per_element());
  const std::vector<std::string> upper = {"IT", "'", "S", " don", "'t"};  // only lower-case contractions
  BOOST_TEST(tokenizer.pre_tokenize("IT'S don't") == upper, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(vocab_and_merges_files_read_like_tokenizer_json) {
  TempDir json_dir, files_dir;
  const BpeTokenizer from_json = load(json_dir, tokenizer_json(kHandMerges));
  files_dir.write("vocab.json", hand_vocab().dump());
  std::string merges = "#version: 0.2\n";
  for (const std::string& merge : kHandMerges) merges += merge + "\n";
  files_dir.write("merges.txt", merges);
  const BpeTokenizer from_files = BpeTokenizer::from_directory(files_dir.path());
  for (const char* text : {"abc", "bcab", " ab", "ab abc", "a<|endoftext|>b", "é"}) {
    BOOST_TEST(encode(from_files, text) == encode(from_json, text), text);
  }
  BOOST_TEST(from_files.eos_id().value_or(-1) == 9);
  BOOST_TEST(from_files.vocab_size() == 13);
}

BOOST_AUTO_TEST_CASE(lookups) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  BOOST_TEST(tokenizer.vocab_size() == 13);
  BOOST_TEST(tokenizer.token_to_id("Ġab").value_or(-1) == 8);
  BOOST_TEST(!tokenizer.token_to_id(" ab").has_value());  // tokens are stored byte-mapped
  BOOST_TEST(tokenizer.id_to_token(8).value_or("") == "Ġab");
  BOOST_TEST(!tokenizer.id_to_token(13).has_value());
  BOOST_TEST(!tokenizer.id_to_token(-1).has_value());
}

// ---- decoding ----

BOOST_AUTO_TEST_CASE(decode_maps_bytes_back) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  BOOST_TEST(tokenizer.decode(Ids{6, 3, 4, 9}) == "abc ab<|endoftext|>");
  BOOST_TEST(tokenizer.decode(Ids{11, 12}) == "é");
  BOOST_TEST(tokenizer.decode(Ids{11}) == "\xEF\xBF\xBD");     // half a character
  BOOST_TEST(tokenizer.decode(Ids{6, 1000, -1, 2}) == "abcc");  // ids with no token are skipped
  BOOST_TEST(tokenizer.decode(Ids{}).empty());
}

BOOST_AUTO_TEST_CASE(round_trip_on_tricky_text) {
  TempDir dir;
  const BpeTokenizer tokenizer = load_byte_alphabet(dir);
  const std::vector<std::string> texts = {
      "",
      " ",
      "   ",
      "Hello, World!",
      "  leading and trailing  ",
      "tabs\tand\nnew\r\nlines\n\n",
      "it's don't WE'RE y'all",
      "café naïve Ångström",
      "e\u0301 combining",
      "日本語 中文 한국어",
      "😀 👍🏽 👨‍👩‍👧 🇫🇷",
      "\u00a0\u2028\u3000\u180e",
      "a<|endoftext|>b<|endoftext|>",
      "<|endoftext",
      std::string("nul\0byte", 8),
      "\x01\x7f control",
  };
  for (const std::string& text : texts) {
    const Ids ids = tokenizer.encode(text);
    BOOST_TEST(tokenizer.decode(ids) == text, text);
  }
}

BOOST_AUTO_TEST_CASE(every_byte_has_its_own_id) {
  TempDir dir;
  const BpeTokenizer tokenizer = load_byte_alphabet(dir);
  std::vector<int32_t> seen;
  for (int byte = 0; byte < 256; ++byte) {
    const Ids ids = tokenizer.encode(std::string(1, static_cast<char>(byte)));
    BOOST_TEST_REQUIRE(ids.size() == 1u, "byte " << byte);
    seen.push_back(ids[0]);
  }
  std::sort(seen.begin(), seen.end());
  BOOST_TEST((std::adjacent_find(seen.begin(), seen.end()) == seen.end()));
  BOOST_TEST(seen.back() < 256);
}

BOOST_AUTO_TEST_CASE(invalid_utf8_is_encoded_not_rejected) {
  TempDir dir;
  const BpeTokenizer tokenizer = load_byte_alphabet(dir);
  const std::string broken = "ok\xFF\xC3 x\xE2\x82";
  const Ids ids = tokenizer.encode(broken);
  BOOST_TEST(ids.size() == broken.size());  // no merges: one id per byte
  // Decoding replaces each ill-formed sequence with U+FFFD.
  BOOST_TEST(tokenizer.decode(ids) == "ok\xEF\xBF\xBD\xEF\xBF\xBD x\xEF\xBF\xBD");
}

BOOST_AUTO_TEST_CASE(threads_share_one_tokenizer) {
  TempDir dir;
  const BpeTokenizer tokenizer = load(dir, tokenizer_json(kHandMerges));
  std::string text;
  for (int i = 0; i < 200; ++i) text += (i % 3 ? "abc bcab " : "cab ab<|endoftext|>");
  const Ids expected = tokenizer.encode(text);
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t, copy = tokenizer] {
      for (int i = 0; i < 50; ++i) failures[t] += copy.encode(text) != expected;
    });
  }
  for (std::thread& thread : threads) thread.join();
  BOOST_TEST(failures == std::vector<int>(4, 0), boost::test_tools::per_element());
}

// ---- errors name the file and what is wrong ----

BOOST_AUTO_TEST_CASE(missing_files) {
  TempDir dir;
  check_error(dir.path() / "absent", {(dir.path() / "absent").string(), "does not exist"});
  check_error(dir.path(), {dir.path().string(), "tokenizer.json", "vocab.json"});
  dir.write("vocab.json", hand_vocab().dump());
  check_error(dir.path(), {(dir.path() / "merges.txt").string()});
  const fs::path file = dir.write("not_a_dir", "");
  check_error(file, {file.string(), "not a directory"});
}

BOOST_AUTO_TEST_CASE(malformed_tokenizer_json) {
  TempDir dir;
  const fs::path file = dir.write("tokenizer.json", "{\"model\": {");
  check_error(dir.path(), {file.string(), "not valid JSON"});
  dir.write("tokenizer.json", "[1, 2]");
  check_error(dir.path(), {file.string(), "not a JSON object"});
}

BOOST_AUTO_TEST_CASE(bad_merges_are_located) {
  check_json_error([](Json& d) { d["model"]["merges"][1] = 5; }, {"model.merges[1]", "not a pair of strings"});
  check_json_error([](Json& d) { d["model"]["merges"][2] = "a b c"; }, {"model.merges[2]", "one space"});
  check_json_error([](Json& d) { d["model"]["merges"][0] = Json::array({"a"}); }, {"model.merges[0]"});
  check_json_error([](Json& d) { d["model"]["merges"][0] = "a z"; }, {"model.merges[0]", "\"z\"", "not in the vocab"});
  check_json_error([](Json& d) { d["model"]["merges"][0] = "c a"; }, {"model.merges[0]", "\"ca\"", "not in the vocab"});
  check_json_error([](Json& d) { d["model"]["merges"] = "a b"; }, {"model.merges", "not an array"});
  check_json_error([](Json& d) { d["model"].erase("merges"); }, {"\"merges\""});
}

BOOST_AUTO_TEST_CASE(bad_vocabularies_are_located) {
  check_json_error([](Json& d) { d["model"]["vocab"]["a"] = "zero"; }, {"model.vocab[\"a\"]", "not an id"});
  check_json_error([](Json& d) { d["model"]["vocab"]["b"] = 0; }, {"model.vocab", "id 0"});
  check_json_error([](Json& d) { d["model"].erase("vocab"); }, {"\"vocab\""});
  check_json_error([](Json& d) { d["model"]["unk_token"] = "<nope>"; }, {"model.unk_token", "<nope>"});
  // An id far beyond the tokens would size the id -> token table (2,147,483,000 ids: about 80 GB).
  check_json_error([](Json& d) { d["model"]["vocab"]["a"] = 2147483000; },
                   {"model.vocab[\"a\"]", "id 2147483000", "far beyond the"});
}

BOOST_AUTO_TEST_CASE(unsupported_configurations_are_refused) {
  check_json_error([](Json& d) { d["model"]["type"] = "WordPiece"; }, {"model.type", "WordPiece"});
  check_json_error([](Json& d) { d["model"]["byte_fallback"] = true; }, {"model.byte_fallback"});
  check_json_error([](Json& d) { d["model"]["dropout"] = 0.1; }, {"model.dropout"});
  check_json_error([](Json& d) { d["model"]["continuing_subword_prefix"] = "##"; }, {"continuing_subword_prefix"});
  check_json_error([](Json& d) { d["normalizer"] = {{"type", "NFC"}}; }, {"normalizer", "NFC"});
  check_json_error([](Json& d) { d["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"pre_tokenizer.type", "Whitespace"});
  check_json_error([](Json& d) { d.erase("pre_tokenizer"); }, {"\"pre_tokenizer\""});
  // Without a ByteLevel pre-tokenizer the BPE is SentencePiece-style, which a ByteLevel decoder does not fit.
  check_json_error([](Json& d) { d["pre_tokenizer"] = nullptr; }, {"decoder.type", "ByteLevel"});
  check_json_error([](Json& d) { d["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}}; },
                   {"decoder.type", "ByteLevel"});
  check_json_error([](Json& d) { d["decoder"] = {{"type", "WordPiece"}}; }, {"decoder.type"});
  check_json_error(
      [](Json& d) {
        d["pre_tokenizer"] = {{"type", "Sequence"},
                              {"pretokenizers",
                               {{{"type", "Split"},
                                 {"pattern", {{"Regex", "\\s+"}}},
                                 {"behavior", "Removed"},
                                 {"invert", false}},
                                d["pre_tokenizer"]}}};
      },
      {"pre_tokenizer.pretokenizers[0].behavior", "Removed"});
  check_json_error(
      [](Json& d) {
        d["pre_tokenizer"] = {{"type", "Sequence"},
                              {"pretokenizers",
                               {{{"type", "Split"},
                                 {"pattern", {{"Regex", "(unclosed"}}},
                                 {"behavior", "Isolated"},
                                 {"invert", false}},
                                d["pre_tokenizer"]}}};
      },
      {"pre_tokenizer.pretokenizers[0].pattern.Regex"});
}

BOOST_AUTO_TEST_CASE(bad_vocab_and_merges_files) {
  TempDir dir;
  const fs::path vocab = dir.write("vocab.json", "{\"a\": 0, \"b\": -3}");
  const fs::path merges = dir.write("merges.txt", "#version: 0.2\na b\n");
  check_error(dir.path(), {vocab.string(), "\"b\"", "not an id"});
  dir.write("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
  dir.write("merges.txt", "#version: 0.2\na b\nab\n");
  check_error(dir.path(), {merges.string(), "line 3", "\"ab\""});
  dir.write("merges.txt", "a b\nb a\n");
  check_error(dir.path(), {merges.string(), "line 2", "\"ba\"", "not in the vocab"});
  dir.write("vocab.json", "not json");
  check_error(dir.path(), {vocab.string(), "not valid JSON"});
}

BOOST_AUTO_TEST_SUITE_END()  // test_bpe_tokenizer
