// gpt2_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]
//
// Loads a Hugging Face GPT-2 directory, runs it in eval mode on `input_ids`
// (int64 (B, T)) and writes `logits` (B, T, V) and `loss`: the mean next-token
// cross-entropy of logits[:, :-1] against input_ids[:, 1:]. With save_dir, also saves
// the loaded model there. test_gpt2_parity.py compares all of it with transformers.
#include "model/gpt2_checkpoint.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: gpt2_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    Gpt2 model = load_gpt2(argv[1]);
    model->eval();

    SafetensorsReader input(argv[2]);
    torch::Tensor input_ids = input.tensor("input_ids");

    torch::NoGradGuard no_grad;
    torch::Tensor logits = model->forward(input_ids);  // (B, T, V)
    const int64_t V = logits.size(-1);
    using torch::indexing::Slice;
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits.index({Slice(), Slice(0, -1)}).reshape({-1, V}),
        input_ids.index({Slice(), Slice(1)}).reshape({-1}));
    save_safetensors(argv[3], {{"logits", logits}, {"loss", loss}});

    if (argc == 5) save_gpt2(model, argv[4]);
  } catch (const std::exception& e) {
    std::cerr << "gpt2_forward: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
