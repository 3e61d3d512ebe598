// llama_init <config.json> <seed> <save_dir>
//
// Initialises a model with init_llama and saves it as a Hugging Face directory, so
// test_llama_parity.py can compare its statistics with transformers' initialisation.
#include "model/llama_checkpoint.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: llama_init <config.json> <seed> <save_dir>\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    Llama model = init_llama(LlamaConfig::from_json_file(argv[1]), std::stoull(argv[2]));
    save_llama(model, argv[3]);
  } catch (const std::exception& e) {
    std::cerr << "llama_init: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
