// BERT in a Hugging Face model directory: config.json plus model.safetensors (or a
// sharded model.safetensors.index.json), and fresh initialisation the way Hugging
// Face initialises BERT.
//
// Checkpoints of task models carry the encoder under a `bert.` prefix beside their
// heads: BertForSequenceClassification and BertForTokenClassification add
// `classifier.*`, BertForMaskedLM and BertForPreTraining add `cls.*` (the masked-LM
// head, and the next-sentence head). The encoder is read from either layout; those
// heads are skipped and listed in the load report, because heads belong to the
// trainer, which builds its own for the task at hand. Any other tensor is an error.
#pragma once

#include "model/bert.h"
#include "model/hf_checkpoint.h"
#include "model/safetensors.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace ftrain::model {

// What load_bert found besides a complete BertModel.
struct BertLoadReport {
  // The checkpoint had no pooler.dense.* (BertForMaskedLM and some sentence-transformers
  // exports are saved without a pooler), so the pooler was initialised as init_bert
  // initialises it, from the seed given to load_bert: the same on every rank.
  bool pooler_initialised = false;
  // Task-head tensors (cls.*, classifier.*) present in the checkpoint and not loaded,
  // under their stored names.
  std::vector<std::string> ignored_heads;
  // One line for each of the above, saying what happened; empty when the checkpoint
  // held exactly the encoder and its pooler.
  std::vector<std::string> warnings;
};

// Reads config.json and the weights of a Hugging Face BERT directory. Weights come
// from model.safetensors, or from model.safetensors.index.json and its shards when
// there is no single file. Names may carry the `bert.` prefix or not; LayerNorm
// `gamma`/`beta` (checkpoints converted from TensorFlow) are read as weight/bias;
// the index buffers embeddings.position_ids and embeddings.token_type_ids are
// ignored. Parameters are float32 on the CPU whatever dtype the file stores.
//
// A missing pooler is initialised from `init_seed` (see BertLoadReport). With a
// `report` the caller receives what happened; without one, each warning is written
// to std::cerr, so a random pooler is never silent. Throws std::runtime_error
// naming the file when it cannot read the directory, and naming the tensors when
// they do not match config.json.
Bert load_bert(const std::filesystem::path& dir, BertLoadReport* report = nullptr, uint64_t init_seed = 0);

// A BERT with Hugging Face's initialisation: Linear weights and embeddings
// normal(0, initializer_range), the padding row of word_embeddings (pad_token_id) 0,
// biases 0, LayerNorm scale 1 and shift 0. The same config and seed give the same
// parameters.
Bert init_bert(const BertConfig& config, uint64_t seed);

// How BERT parameter `name` (any prefix) starts in Hugging Face's initialisation, drawn
// element by element (model/parameter_init.h): weights and embeddings
// normal(0, initializer_range) with the padding token's word embedding 0, biases 0,
// LayerNorm scale 1 and shift 0.
ParameterInit bert_parameter_init(const BertConfig& config, const std::string& name);

// Writes config.json (architectures ["BertModel"]) and model.safetensors in
// BertModel's layout (no prefix), each file replaced atomically. model.safetensors
// takes precedence over any index file already in the directory.
void save_bert(Bert& model, const std::filesystem::path& dir, ExistingDirectory existing = ExistingDirectory::refuse);

// The model's parameters under their BertModel names, in module order (views, not copies).
NamedTensors to_hf_state(Bert& model);

// Copies tensors named as Hugging Face stores them into the model, after checking
// that every parameter is present exactly once with the right shape and that nothing
// else is there (see the top of this file and load_bert for what is skipped). A
// checkpoint without both pooler tensors leaves the pooler initialised from
// `init_seed`. All problems are reported in one std::runtime_error prefixed by `source`.
// With `slices`, each parameter takes only its part of the stored tensor (see
// ParameterSlices), and each file tensor's pages are given back once copied.
BertLoadReport load_hf_state(Bert& model, const NamedTensors& tensors, const std::string& source,
                             uint64_t init_seed = 0, const ParameterSlices* slices = nullptr);

struct ModelFamily;
// BERT's entry in the registry of model families (model/families.h).
ModelFamily bert_family();

}  // namespace ftrain::model
