// bpe_encode: runs BpeTokenizer over a JSON file so that tests can compare it with
// Hugging Face `tokenizers`.
//
//   bpe_encode DIR encode INPUT       INPUT: ["text", ...]  ->  [[id, ...], ...]
//   bpe_encode DIR decode INPUT       INPUT: [[id, ...], ...]  ->  ["text", ...]
//   bpe_encode DIR pre_tokenize INPUT INPUT: ["text", ...]  ->  [["piece", ...], ...]
//   bpe_encode DIR info               ->  {"vocab_size": n, "eos_id": id or null}
//
// Output goes to stdout; errors go to stderr with exit status 1.

#include "data/bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>

namespace {

using Json = nlohmann::json;

Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot be opened");
  try {
    return Json::parse(in);
  } catch (const Json::parse_error& e) {
    throw std::runtime_error(path + ": is not valid JSON: " + e.what());
  }
}

Json run(const ftrain::data::BpeTokenizer& tokenizer, const std::string& mode, const Json& input) {
  Json output = Json::array();
  if (mode == "encode") {
    for (const Json& text : input) output.push_back(tokenizer.encode(text.get<std::string>()));
  } else if (mode == "decode") {
    for (const Json& ids : input) output.push_back(tokenizer.decode(ids.get<std::vector<int32_t>>()));
  } else if (mode == "pre_tokenize") {
    for (const Json& text : input) output.push_back(tokenizer.pre_tokenize(text.get<std::string>()));
  } else {
    throw std::runtime_error("unknown mode \"" + mode + "\" (encode, decode, pre_tokenize or info)");
  }
  return output;
}

}  // namespace

int main(int argc, char** argv) {
  const bool info = argc == 3 && std::string(argv[2]) == "info";
  if (argc != 4 && !info) {
    std::cerr << "usage: bpe_encode TOKENIZER_DIR {encode|decode|pre_tokenize} INPUT.json\n"
                 "       bpe_encode TOKENIZER_DIR info\n";
    return 2;
  }
  try {
    const auto tokenizer = ftrain::data::BpeTokenizer::from_directory(argv[1]);
    Json output;
    if (info) {
      const auto eos = tokenizer.eos_id();
      output = {{"vocab_size", tokenizer.vocab_size()}, {"eos_id", eos ? Json(*eos) : Json(nullptr)}};
    } else {
      output = run(tokenizer, argv[2], read_json(argv[3]));
    }
    std::cout << output.dump() << '\n';
  } catch (const std::exception& e) {
    std::cerr << "bpe_encode: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
