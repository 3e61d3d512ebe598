// gpt2_init <config.json> <seed> <save_dir>
//
// Initialises a GPT-2 with init_gpt2 and saves it as a Hugging Face directory, so
// test_gpt2_parity.py can compare its statistics with transformers' initialisation.
#include "model/gpt2_checkpoint.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: gpt2_init <config.json> <seed> <save_dir>\n";
    return 2;
  }
  try {
    using namespace ftrain::model;
    Gpt2 model = init_gpt2(Gpt2Config::from_json_file(argv[1]), std::stoull(argv[2]));
    save_gpt2(model, argv[3]);
  } catch (const std::exception& e) {
    std::cerr << "gpt2_init: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
