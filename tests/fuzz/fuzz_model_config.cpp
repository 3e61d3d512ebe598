// A model's config.json: the registry picks the family by model_type, and that family's
// parser reads the rest (GPT-2, the Llama family, BERT, T5).
#include <nlohmann/json.hpp>

#include <functional>
#include <map>

#include "model/bert_config.h"
#include "model/families.h"
#include "model/gpt2_config.h"
#include "model/llama_config.h"
#include "model/t5_config.h"
#include "tests/fuzz/fuzz_support.h"

using namespace ftrain::model;

namespace {

// Each family's config parser, by registry name; a family missing here fails the seeds.
const std::map<std::string, std::function<void(const nlohmann::json&, const std::string&)>> kParsers = {
    {"gpt2", [](const nlohmann::json& c, const std::string& s) { Gpt2Config::from_json(c, s); }},
    {"llama", [](const nlohmann::json& c, const std::string& s) { LlamaConfig::from_json(c, s); }},
    {"bert", [](const nlohmann::json& c, const std::string& s) { BertConfig::from_json(c, s); }},
    {"t5", [](const nlohmann::json& c, const std::string& s) { T5Config::from_json(c, s); }},
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json config = nlohmann::json::parse(ftrain::fuzz::as_text(data, size), nullptr, false);
  if (config.is_discarded()) return 0;  // not JSON: refused before any family reads it
  const std::string source = "fuzz/config.json";
  ftrain::fuzz::refusals_name(source, [&] {
    const ModelFamily& family = model_family(config, source);
    const auto parser = kParsers.find(family.name);
    if (parser == kParsers.end()) ftrain::fuzz::report_finding(source, "no parser for family " + family.name);
    parser->second(config, source);
  });
  return 0;
}
