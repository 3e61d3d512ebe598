// bert_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]
//
// Loads a Hugging Face BERT directory and runs it in eval mode on `input_ids` (int64
// (B, T)) with `attention_mask` and `token_type_ids` when the input file has them
// (each may be left out: no padding, all type 0). Writes `last_hidden_state`
// (B, T, C) and `pooler_output` (B, C). Load warnings (pooler initialised, heads not
// loaded) go to stderr. With save_dir, also saves the loaded model there.
// test_bert_parity.py compares all of it with transformers.
#include "model/bert_checkpoint.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: bert_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    Bert model = load_bert(argv[1]);
    model->eval();

    SafetensorsReader input(argv[2]);
    auto optional = [&](const std::string& name) {
      return input.contains(name) ? input.tensor(name) : torch::Tensor();
    };
    torch::NoGradGuard no_grad;
    BertOutput output = model->forward(input.tensor("input_ids"), optional("attention_mask"),
                                       optional("token_type_ids"));
    save_safetensors(argv[3], {{"last_hidden_state", output.last_hidden_state},
                               {"pooler_output", output.pooler_output}});

    if (argc == 5) save_bert(model, argv[4]);
  } catch (const std::exception& e) {
    std::cerr << "bert_forward: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
