// tokenize_dump: runs the tokenizer that load_tokenizer picks for a model directory over
// a JSON file, so that tests can compare it with Hugging Face `tokenizers`.
//
//   tokenize_dump DIR info                 ->  {"kind", "vocab_size", "special_ids": {...},
//                                              "added_single", "added_pair"}
//   tokenize_dump DIR encode INPUT         ["text", ...]  ->  [[id, ...], ...]
//   tokenize_dump DIR encode_offsets INPUT  ["text", ...]  ->  [{"ids": [...], "offsets": [[begin, end], ...]}, ...]
//   tokenize_dump DIR encode_specials INPUT
//       [{"text": t, "pair": p?, "add_special_tokens": b?, "max_length": n?}, ...]
//       ->  [{"ids": [...], "token_type_ids": [...]} or {"error": "..."}, ...]
//   tokenize_dump DIR decode INPUT         [{"ids": [...], "skip_special_tokens": b?}, ...]  ->  ["text", ...]
//   tokenize_dump DIR normalize INPUT      ["text", ...]  ->  ["normalized", ...]   (WordPiece)
//   tokenize_dump DIR pre_tokenize INPUT   ["text", ...]  ->  [["piece", ...], ...]
//   tokenize_dump DIR token_to_id INPUT    ["token", ...]  ->  [id or null, ...]
//   tokenize_dump DIR id_to_token INPUT    [id, ...]  ->  ["token" or null, ...]
//
// Output goes to stdout; errors go to stderr with exit status 1.

#include "data/bpe_tokenizer.h"
#include "data/tokenizer.h"
#include "data/unigram_tokenizer.h"
#include "data/wordpiece_tokenizer.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>

namespace {

using Json = nlohmann::json;
using ftrain::data::BpeTokenizer;
using ftrain::data::Tokenizer;
using ftrain::data::UnigramTokenizer;
using ftrain::data::WordPieceTokenizer;

Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot be opened");
  try {
    return Json::parse(in);
  } catch (const Json::parse_error& e) {
    throw std::runtime_error(path + ": is not valid JSON: " + e.what());
  }
}

Json optional_id(const std::optional<int32_t>& id) { return id ? Json(*id) : Json(nullptr); }

Json info(const Tokenizer& tokenizer) {
  const auto& ids = tokenizer.special_ids();
  return {{"kind", std::string(tokenizer.kind())},
          {"vocab_size", tokenizer.vocab_size()},
          {"special_ids",
           {{"bos", optional_id(ids.bos)},
            {"eos", optional_id(ids.eos)},
            {"unk", optional_id(ids.unk)},
            {"pad", optional_id(ids.pad)},
            {"cls", optional_id(ids.cls)},
            {"sep", optional_id(ids.sep)},
            {"mask", optional_id(ids.mask)}}},
          {"added_single", tokenizer.special_template().added_count(false)},
          {"added_pair", tokenizer.special_template().added_count(true)}};
}

Json encode_with_specials(const Tokenizer& tokenizer, const Json& request) {
  ftrain::data::EncodeOptions options;
  options.add_special_tokens = request.value("add_special_tokens", true);
  if (request.contains("max_length") && !request["max_length"].is_null()) {
    options.max_length = request["max_length"].get<size_t>();
  }
  const std::string text = request.at("text").get<std::string>();
  try {
    const ftrain::data::Encoding encoding =
        request.contains("pair") && !request["pair"].is_null()
            ? tokenizer.encode_with_specials(text, request["pair"].get<std::string>(), options)
            : tokenizer.encode_with_specials(text, options);
    return {{"ids", encoding.ids}, {"token_type_ids", encoding.token_type_ids}};
  } catch (const std::invalid_argument& e) {
    return {{"error", e.what()}};
  }
}

Json run(const Tokenizer& tokenizer, const std::string& mode, const Json& input) {
  Json output = Json::array();
  const auto* wordpiece = dynamic_cast<const WordPieceTokenizer*>(&tokenizer);
  const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
  const auto* unigram = dynamic_cast<const UnigramTokenizer*>(&tokenizer);
  for (const Json& item : input) {
    if (mode == "encode") {
      output.push_back(tokenizer.encode(item.get<std::string>()));
    } else if (mode == "encode_offsets") {
      std::vector<ftrain::data::CharSpan> offsets;
      const auto ids = tokenizer.encode_with_offsets(item.get<std::string>(), offsets);
      Json spans = Json::array();
      for (const auto& span : offsets) spans.push_back({span.begin, span.end});
      output.push_back({{"ids", ids}, {"offsets", spans}});
    } else if (mode == "encode_specials") {
      output.push_back(encode_with_specials(tokenizer, item));
    } else if (mode == "decode") {
      const auto ids = item.at("ids").get<std::vector<int32_t>>();
      output.push_back(tokenizer.decode(ids, item.value("skip_special_tokens", false)));
    } else if (mode == "normalize" && wordpiece) {
      output.push_back(wordpiece->normalize(item.get<std::string>()));
    } else if (mode == "pre_tokenize" && (wordpiece || bpe || unigram)) {
      const std::string text = item.get<std::string>();
      output.push_back(wordpiece ? wordpiece->pre_tokenize(text)
                       : bpe     ? bpe->pre_tokenize(text)
                                 : unigram->pre_tokenize(text));
    } else if (mode == "token_to_id") {
      output.push_back(optional_id(tokenizer.token_to_id(item.get<std::string>())));
    } else if (mode == "id_to_token") {
      const auto token = tokenizer.id_to_token(item.get<int32_t>());
      output.push_back(token ? Json(*token) : Json(nullptr));
    } else {
      throw std::runtime_error("mode \"" + mode + "\" is unknown or does not apply to a " +
                               std::string(tokenizer.kind()) + " tokenizer");
    }
  }
  return output;
}

}  // namespace

int main(int argc, char** argv) {
  const bool info_mode = argc == 3 && std::string(argv[2]) == "info";
  if (argc != 4 && !info_mode) {
    std::cerr << "usage: tokenize_dump MODEL_DIR "
                 "{encode|encode_offsets|encode_specials|decode|normalize|pre_tokenize|token_to_id|id_to_token} INPUT.json\n"
                 "       tokenize_dump MODEL_DIR info\n";
    return 2;
  }
  try {
    const auto tokenizer = ftrain::data::load_tokenizer(argv[1]);
    const Json output = info_mode ? info(*tokenizer) : run(*tokenizer, argv[2], read_json(argv[3]));
    std::cout << output.dump(-1, ' ', false, Json::error_handler_t::replace) << '\n';
  } catch (const std::exception& e) {
    std::cerr << "tokenize_dump: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
