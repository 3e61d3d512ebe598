#include "data/unigram_tokenizer.h"

#include "data/sentencepiece_text.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <deque>
#include <limits>
#include <stdexcept>

namespace ftrain::data {

namespace fs = std::filesystem;
using namespace tokenizer_parts;
using sentencepiece::Metaspace;

namespace {

// What Hugging Face subtracts from the lowest piece score to score an unknown character.
constexpr double kUnknownPenalty = 10.0;

// The pieces of the vocabulary as a byte trie, so that every piece matching at a
// position is found in one walk.
class PieceTrie {
 public:
  void insert(std::string_view piece, int32_t id) {
    int32_t node = 0;
    for (const char byte : piece) {
      const auto [it, added] = edges_.try_emplace(edge(node, byte), static_cast<int32_t>(ids_.size()));
      if (added) ids_.push_back(-1);
      node = it->second;
    }
    ids_[static_cast<size_t>(node)] = id;
  }

  // Calls found(length, id) for each piece that text starts with, shortest first.
  template <class Found>
  void prefixes(std::string_view text, Found&& found) const {
    int32_t node = 0;
    for (size_t length = 1; length <= text.size(); ++length) {
      const auto it = edges_.find(edge(node, text[length - 1]));
      if (it == edges_.end()) return;
      node = it->second;
      if (ids_[static_cast<size_t>(node)] >= 0) found(length, ids_[static_cast<size_t>(node)]);
    }
  }

 private:
  static uint64_t edge(int32_t node, char byte) {
    return static_cast<uint64_t>(static_cast<uint32_t>(node)) << 8 | static_cast<unsigned char>(byte);
  }
  std::vector<int32_t> ids_ = {-1};  // the piece that ends at each node, -1 if none; node 0 is the root
  std::unordered_map<uint64_t, int32_t> edges_;
};

}  // namespace

struct UnigramTokenizer::Model : TokenTable {
  std::vector<double> scores;  // of each piece, by id
  PieceTrie trie;
  double unknown_score = 0.0;
  int32_t unk_id = 0;
  bool byte_fallback = false;

  sentencepiece::Normalizer normalizer;
  AddedVocabulary::Normalizer normalize;  // empty when the normalizer is
  bool whitespace_split = false;
  std::optional<Metaspace> metaspace;
  sentencepiece::Decoder decoder;

  static std::shared_ptr<Model> from_tokenizer_json(const fs::path& file, const Json& root);
  void read_model(const Json& model, const fs::path& file);
  void read_pre_tokenizer(const Json& pre_tokenizer, const fs::path& file);
  void finish(const fs::path& dir, const Json* post_processor, const fs::path& file);

  void pre_tokenize(const TextPiece& piece, std::deque<std::string>& storage, std::vector<std::string_view>& words) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void append_piece(std::string_view text, std::vector<int32_t>& ids) const;
};

void UnigramTokenizer::Model::read_model(const Json& model, const fs::path& file) {
  const Json* vocab_json = member(model, "vocab");
  if (!vocab_json || !vocab_json->is_array() || vocab_json->empty()) {
    fail(file, "model.vocab is not a non-empty array of [piece, score] pairs");
  }
  if (vocab_json->size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail(file, "model.vocab holds " + std::to_string(vocab_json->size()) + " pieces, more than int32 ids allow");
  }
  double lowest = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < vocab_json->size(); ++i) {
    const Json& entry = (*vocab_json)[i];
    const std::string where = "model.vocab[" + std::to_string(i) + "]";
    if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_number()) {
      fail(file, where + " is " + shown(entry) + ", not a [piece, score] pair");
    }
    std::string piece = entry[0].get<std::string>();
    const double score = entry[1].get<double>();
    if (piece.empty()) fail(file, where + " is an empty piece");
    if (replace_invalid_utf8(piece) != piece) fail(file, where + " is not valid UTF-8");
    if (!std::isfinite(score)) fail(file, where + " has score " + shown(entry[1]) + ", not a finite number");
    const auto id = static_cast<int32_t>(i);
    if (const auto [it, inserted] = vocab.try_emplace(piece, id); !inserted) {
      fail(file, where + " " + shown(piece) + " repeats model.vocab[" + std::to_string(it->second) + "]");
    }
    trie.insert(piece, id);
    lowest = std::min(lowest, score);
    scores.push_back(score);
  }
  unknown_score = lowest - kUnknownPenalty;
  const Json* unk = member(model, "unk_id");
  if (!unk || unk->is_null()) fail(file, "model.unk_id is missing; a Unigram model needs an unknown piece");
  unk_id = read_id(*unk, file, "model.unk_id");
  if (static_cast<size_t>(unk_id) >= scores.size()) {
    fail(file, "model.unk_id is " + std::to_string(unk_id) + ", past the " + std::to_string(scores.size()) + " pieces");
  }
  byte_fallback = read_bool(model, "byte_fallback", false, file, "model");
}

void UnigramTokenizer::Model::read_pre_tokenizer(const Json& json, const fs::path& file) {
  if (json.is_null()) return;
  const auto read_step = [&](const Json& step, const std::string& where, bool last) {
    const std::string type = type_of(step, file, where);
    if (type == "WhitespaceSplit" && !whitespace_split && !metaspace) {
      whitespace_split = true;
    } else if (type == "Metaspace" && last) {
      metaspace = Metaspace::read(step, file, where);
    } else {
      fail(file, where + ".type is " + shown(type) +
                     "; Unigram tokenizers support WhitespaceSplit, then Metaspace, or either alone");
    }
  };
  if (type_of(json, file, "pre_tokenizer") != "Sequence") {
    read_step(json, "pre_tokenizer", true);
    return;
  }
  const Json* steps = member(json, "pretokenizers");
  if (!steps || !steps->is_array()) fail(file, "pre_tokenizer.pretokenizers is not an array");
  for (size_t i = 0; i < steps->size(); ++i) {
    read_step((*steps)[i], "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]", i + 1 == steps->size());
  }
}

void UnigramTokenizer::Model::finish(const fs::path& dir, const Json* post_processor, const fs::path& file) {
  if (!normalizer.empty()) normalize = normalizer;
  index(normalize, file);

  special_template = read_post_processor(post_processor, file, static_cast<int32_t>(token_of_id.size()));
  const TokenLookup lookup = [this](std::string_view token) { return find(token); };
  SpecialTokenIds defaults;
  defaults.unk = unk_id;
  defaults.bos = lookup("<s>");
  defaults.eos = lookup("</s>");
  defaults.pad = lookup("<pad>");
  special_ids = read_special_token_ids(dir, lookup, defaults);
}

std::shared_ptr<UnigramTokenizer::Model> UnigramTokenizer::Model::from_tokenizer_json(const fs::path& file,
                                                                                      const Json& root) {
  if (!root.is_object()) fail(file, "is not a JSON object");
  auto model = std::make_shared<Model>();
  const Json* model_json = member(root, "model");
  if (!model_json || !model_json->is_object()) fail(file, "has no \"model\" object");
  if (const auto type = read_optional_string(*model_json, "type", file, "model"); type != "Unigram") {
    fail(file, "model.type is " + (type ? shown(*type) : std::string("missing")) + ", not \"Unigram\"");
  }
  model->read_model(*model_json, file);
  if (const Json* normalizer = member(root, "normalizer")) {
    model->normalizer = sentencepiece::Normalizer::read(*normalizer, file);
  }
  const Json* pre_tokenizer = member(root, "pre_tokenizer");
  if (!pre_tokenizer) fail(file, "has no \"pre_tokenizer\"");
  model->read_pre_tokenizer(*pre_tokenizer, file);
  model->decoder = sentencepiece::Decoder::read(member(root, "decoder"), file);
  if (const Json* added = member(root, "added_tokens")) model->added.read(*added, file, model->vocab);
  model->finish(file.parent_path(), member(root, "post_processor"), file);
  return model;
}

// A stretch of normalized text between added tokens -> the words cut into pieces one by one.
void UnigramTokenizer::Model::pre_tokenize(const TextPiece& piece, std::deque<std::string>& storage,
                                           std::vector<std::string_view>& words) const {
  std::vector<std::pair<std::string_view, bool>> parts;  // each with whether it starts the text
  if (whitespace_split) {
    size_t start = 0;
    const auto flush = [&](size_t end) {
      if (end > start) parts.emplace_back(piece.text.substr(start, end - start), piece.at_text_start && start == 0);
    };
    for (size_t pos = 0; pos < piece.text.size();) {
      const size_t length = scan_utf8(piece.text, pos).length;
      const auto c = char_at(piece.text, pos);
      pos += length;
      if (c && is_white_space(*c)) {
        flush(pos - length);
        start = pos;
      }
    }
    flush(piece.text.size());
  } else if (!piece.text.empty()) {
    parts.emplace_back(piece.text, piece.at_text_start);
  }
  for (const auto& [part, at_text_start] : parts) {
    if (metaspace) {
      metaspace->pre_tokenize(part, at_text_start, storage, words);
    } else {
      words.push_back(part);
    }
  }
}

// Viterbi over the word's bytes: best[end] is the highest-scoring cut of word[0, end),
// through its last piece. Pieces are tried from each character start in order, shortest
// first, and a later candidate must score strictly higher, which settles ties as Hugging
// Face does.
void UnigramTokenizer::Model::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  struct Best {
    double score = 0.0;
    int64_t start = -1;  // -1: no cut reaches here yet
    int32_t id = 0;
  };
  std::vector<Best> best(word.size() + 1);
  best[0].start = 0;
  const auto offer = [&](size_t start, size_t end, double score, int32_t id) {
    Best& target = best[end];
    const double total = best[start].score + score;
    if (target.start < 0 || total > target.score) target = {total, static_cast<int64_t>(start), id};
  };
  for (size_t start = 0; start < word.size();) {
    const size_t char_length = scan_utf8(word, start).length;
    bool whole_character = false;
    trie.prefixes(word.substr(start), [&](size_t length, int32_t id) {
      offer(start, start + length, scores[static_cast<size_t>(id)], id);
      whole_character = whole_character || length == char_length;
    });
    if (!whole_character) offer(start, start + char_length, unknown_score, unk_id);
    start += char_length;
  }
  // Back from the end; neighbouring unknown pieces fuse into one.
  std::vector<std::pair<std::string_view, int32_t>> cut;
  for (size_t end = word.size(); end > 0;) {
    const Best& last = best[end];
    const auto start = static_cast<size_t>(last.start);
    const std::string_view text = word.substr(start, end - start);
    if (last.id == unk_id && !cut.empty() && cut.back().second == unk_id) {
      cut.back().first = word.substr(start, cut.back().first.size() + text.size());
    } else {
      cut.emplace_back(text, last.id);
    }
    end = start;
  }
  for (auto it = cut.rbegin(); it != cut.rend(); ++it) append_piece(it->first, ids);
}

// A cut's text becomes its piece's id when the text is a piece (a fused run of unknown
// characters usually is not), else its bytes' "<0xXX>" tokens with byte fallback when
// all exist, else the unknown token.
void UnigramTokenizer::Model::append_piece(std::string_view text, std::vector<int32_t>& ids) const {
  if (const auto it = vocab.find(text); it != vocab.end()) {
    ids.push_back(it->second);
    return;
  }
  if (byte_fallback) {
    std::vector<int32_t> bytes;
    for (const char byte : text) {
      const auto it = vocab.find(sentencepiece::byte_token(static_cast<unsigned char>(byte)));
      if (it == vocab.end()) break;
      bytes.push_back(it->second);
    }
    if (bytes.size() == text.size()) {
      ids.insert(ids.end(), bytes.begin(), bytes.end());
      return;
    }
  }
  ids.push_back(unk_id);
}

// ---- public interface ----

UnigramTokenizer::UnigramTokenizer(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

UnigramTokenizer UnigramTokenizer::from_directory(const fs::path& dir) {
  const fs::path file = dir / "tokenizer.json";
  return from_tokenizer_json(file, read_json(file));
}

UnigramTokenizer UnigramTokenizer::from_tokenizer_json(const fs::path& file, const Json& document) {
  return UnigramTokenizer(Model::from_tokenizer_json(file, document));
}

std::string_view UnigramTokenizer::kind() const { return "Unigram"; }

std::vector<int32_t> UnigramTokenizer::encode(std::string_view text) const {
  const Model& model = *model_;
  return model.encode(
      replace_invalid_utf8(text), model.normalize,
      [&](const TextPiece& stretch, auto& storage, auto& words) { model.pre_tokenize(stretch, storage, words); },
      [&](std::string_view word, std::vector<int32_t>& ids) { model.encode_word(word, ids); });
}

std::string UnigramTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return model_->decoder.decode(model_->decoded_tokens(ids, skip_special_tokens));
}

const TokenTable& UnigramTokenizer::table() const { return *model_; }

std::vector<std::string> UnigramTokenizer::pre_tokenize(std::string_view raw_text) const {
  const std::string text = replace_invalid_utf8(raw_text);
  std::deque<std::string> storage;
  std::vector<std::string_view> words;
  std::string normalized;
  TextPiece piece{text, std::nullopt, true};
  if (model_->normalize) {
    model_->normalize(text, normalized);
    piece.text = normalized;
  }
  model_->pre_tokenize(piece, storage, words);
  return {words.begin(), words.end()};
}

}  // namespace ftrain::data
