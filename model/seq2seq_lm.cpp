#include "model/seq2seq_lm.h"

#include <stdexcept>

#include "model/config_fields.h"
#include "model/families.h"

namespace fs = std::filesystem;

namespace ftrain::model {

Seq2SeqLm Seq2SeqLm::load(const Seq2SeqLmOptions& options) {
  if (!fs::is_directory(options.path)) throw std::runtime_error(options.path.string() + ": model directory not found");
  const fs::path config_path = options.path / "config.json";
  const nlohmann::json config = read_config_file(config_path);
  const ModelFamily& family =
      model_family_with(config, config_path.string(), &ModelFamily::seq2seq, "sequence-to-sequence training");
  return family.seq2seq(options, config, config_path.string());
}

}  // namespace ftrain::model
