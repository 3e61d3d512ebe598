// t5_generate <model_dir> <inputs.safetensors> <out.safetensors> <max_new_tokens> <num_beams> <length_penalty>
//             <heuristic|on_full|never>
//
// Generates with ftrain's T5 (model/seq2seq_generation.h) from `input_ids` and, when
// given, `attention_mask`, and writes `sequences`, for test_t5_parity.py to compare with
// transformers' generate().
#include "model/safetensors.h"
#include "model/seq2seq_generation.h"
#include "model/t5_checkpoint.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: t5_generate <model_dir> <inputs.safetensors> <out.safetensors> <max_new_tokens> "
                 "<num_beams> <length_penalty> <heuristic|on_full|never>\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    T5 model = load_t5(argv[1]);
    SafetensorsReader input(argv[2]);
    Seq2SeqGenerationOptions options;
    options.max_new_tokens = std::stoll(argv[4]);
    options.num_beams = std::stoll(argv[5]);
    options.length_penalty = std::stod(argv[6]);
    const std::string stopping = argv[7];
    using EarlyStopping = Seq2SeqGenerationOptions::EarlyStopping;
    options.early_stopping = stopping == "on_full" ? EarlyStopping::on_full
                             : stopping == "never" ? EarlyStopping::never
                                                   : EarlyStopping::heuristic;
    const at::Tensor mask = input.contains("attention_mask") ? input.tensor("attention_mask") : at::Tensor();
    save_safetensors(argv[3], {{"sequences", generate(model, input.tensor("input_ids"), mask, options)}});
  } catch (const std::exception& e) {
    std::cerr << "t5_generate: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
