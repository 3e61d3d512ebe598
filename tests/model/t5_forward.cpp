// t5_forward <model_dir> <inputs.safetensors> <out.safetensors> [<save_dir>]
//
// Loads a Hugging Face T5 directory with ftrain's T5 and runs it in eval mode on
// `input_ids` (int64 (B, S)) with `attention_mask` when given, and on
// `decoder_input_ids` or, when the input has `labels` instead, on the labels shifted
// right. Writes `logits` (B, T, V), `encoder_output` (B, S, C) and, with labels, `loss`
// (the mean cross-entropy over labels other than -100). With save_dir, also saves the
// model there. test_t5_parity.py compares it all with transformers.
#include "model/t5_checkpoint.h"
#include "model/safetensors.h"

#include <torch/torch.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: t5_forward <model_dir> <inputs.safetensors> <out.safetensors> [<save_dir>]\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    T5 model = load_t5(argv[1]);
    model->eval();
    SafetensorsReader input(argv[2]);
    const auto optional = [&](const std::string& name) { return input.contains(name) ? input.tensor(name) : torch::Tensor(); };
    torch::NoGradGuard no_grad;
    const torch::Tensor ids = input.tensor("input_ids"), mask = optional("attention_mask");
    const torch::Tensor labels = optional("labels");
    const torch::Tensor decoder_ids = labels.defined() ? model->shift_right(labels) : input.tensor("decoder_input_ids");
    const torch::Tensor encoded = model->encode(ids, mask);
    const torch::Tensor logits = model->decode(decoder_ids, encoded, mask, optional("decoder_attention_mask"));
    NamedTensors out = {{"logits", logits.contiguous()}, {"encoder_output", encoded.contiguous()}};
    if (labels.defined()) {
      out.emplace_back("loss", torch::nn::functional::cross_entropy(
                                   logits.reshape({-1, logits.size(-1)}), labels.reshape({-1}),
                                   torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100))
                                   .reshape({1}));
    }
    save_safetensors(argv[3], out);
    if (argc == 5) save_t5(model, argv[4]);
  } catch (const std::exception& e) {
    std::cerr << "t5_forward: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
