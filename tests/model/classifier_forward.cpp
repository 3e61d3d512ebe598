// classifier_forward <model_dir> <sequence|token|span> <labels> <input.safetensors> <out.safetensors> [<save_dir>]
//
// Loads a classifier (pretrained body, head loaded or new) for the comma-separated
// label names and runs it in eval mode on `input_ids` (int64 (B, T)) with
// `attention_mask` and `token_type_ids` when the input has them. Writes `logits`.
// Prints one JSON line: {"head_initialised": ..., "pooler_initialised": ..., "head": [names trained in a frozen-body stage]}.
// With save_dir, also exports the classifier there. test_classifier_parity.py compares
// it all with transformers.
#include "model/classifier.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>
#include <sstream>

int main(int argc, char** argv) {
  if (argc != 6 && argc != 7) {
    std::cerr << "usage: classifier_forward <model_dir> <sequence|token|span> <labels> <input.safetensors> "
                 "<out.safetensors> [<save_dir>]\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    ClassifierOptions options;
    options.path = argv[1];
    const std::string kind = argv[2];
    options.kind = kind == "token" ? ClassifierKind::token : kind == "span" ? ClassifierKind::span : ClassifierKind::sequence;
    std::stringstream labels(argv[3]);
    for (std::string name; std::getline(labels, name, ',');) options.label_names.push_back(name);
    options.pad_token_id = 0;
    ClassifierLoadReport report;
    Classifier classifier = Classifier::load(options, &report);
    classifier.module().eval();

    SafetensorsReader input(argv[4]);
    auto optional = [&](const std::string& name) {
      return input.contains(name) ? input.tensor(name) : torch::Tensor();
    };
    torch::NoGradGuard no_grad;
    torch::Tensor logits =
        classifier.logits(input.tensor("input_ids"), optional("attention_mask"), optional("token_type_ids"));
    save_safetensors(argv[5], {{"logits", logits.contiguous()}});

    std::cout << "{\"head_initialised\": " << (report.head_initialised ? "true" : "false")
              << ", \"pooler_initialised\": " << (report.pooler_initialised ? "true" : "false") << ", \"head\": [";
    bool first = true;
    for (const auto& item : classifier.module().named_parameters()) {
      if (!classifier.is_head_parameter(item.key())) continue;
      std::cout << (first ? "" : ", ") << "\"" << item.key() << "\"";
      first = false;
    }
    std::cout << "]}\n";
    if (argc == 7) classifier.save(argv[6], ExistingDirectory::refuse);
  } catch (const std::exception& e) {
    std::cerr << "classifier_forward: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
