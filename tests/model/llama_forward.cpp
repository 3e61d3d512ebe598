// llama_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]
//
// Loads a Hugging Face Llama, Mistral or Qwen2 directory, runs it in eval mode on
// `input_ids` (int64 (B, T)) and, when the input file has it, `attention_mask`
// ((B, T), 1 for tokens, 0 for padding), and writes `logits` (B, T, V) and `loss`:
// the mean next-token cross-entropy of logits[:, :-1] against input_ids[:, 1:] over
// the pairs where both the position and its target are tokens. With save_dir, also saves the loaded model there.
// test_llama_parity.py compares all of it with transformers.
#include "model/llama_checkpoint.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: llama_forward <model_dir> <input.safetensors> <out.safetensors> [<save_dir>]\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    using torch::indexing::Slice;
    Llama model = load_llama(argv[1]);
    model->eval();

    SafetensorsReader input(argv[2]);
    const torch::Tensor input_ids = input.tensor("input_ids");
    const torch::Tensor attention_mask =
        input.contains("attention_mask") ? input.tensor("attention_mask") : torch::Tensor();

    torch::NoGradGuard no_grad;
    torch::Tensor logits = model->forward(input_ids, attention_mask);  // (B, T, V)
    const int64_t V = logits.size(-1);
    torch::Tensor targets = input_ids.index({Slice(), Slice(1)}).clone();  // (B, T - 1)
    if (attention_mask.defined())  // only predictions of a token from a token count
      targets.masked_fill_((attention_mask.index({Slice(), Slice(1)}) == 0) |
                               (attention_mask.index({Slice(), Slice(0, -1)}) == 0),
                           -100);
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits.index({Slice(), Slice(0, -1)}).reshape({-1, V}), targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    save_safetensors(argv[3], {{"logits", logits}, {"loss", loss}});

    if (argc == 5) save_llama(model, argv[4]);
  } catch (const std::exception& e) {
    std::cerr << "llama_forward: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
