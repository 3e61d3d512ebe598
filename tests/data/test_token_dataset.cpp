// TokenDatasetWriter / TokenDataset: round trips against arithmetic content, files
// written by the raw HDF5 C API (as another tool would), every malformed-file case and
// the no-overwrite guarantee. Also RowPacker and DocumentReader, the pieces ftrain-prep
// builds rows with.
#include <boost/test/unit_test.hpp>

#include <hdf5.h>

#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <variant>

#include "data/document_reader.h"
#include "data/row_packer.h"
#include "data/token_dataset.h"
#include "tests/data/dataset_fixtures.h"

BOOST_AUTO_TEST_SUITE(test_token_dataset)

namespace fs = std::filesystem;
using namespace ftrain::data;
using ftrain::data::testing::read_text;
using ftrain::data::testing::ScratchDir;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// Runs `action`, requires it to throw std::runtime_error, returns the message.
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  BOOST_FAIL("expected std::runtime_error, nothing was thrown");
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------------------
// A file built with the HDF5 C API alone, starting from a valid dataset; each malformed
// case changes one thing.

using AttributeValue = std::variant<int64_t, std::string, double>;

struct CraftedDataset {
  hid_t file_type;
  std::vector<hsize_t> dims;
  bool written = true;  // false: declared, never written, so the file stores nothing for it
};

struct CraftedFile {
  std::map<std::string, AttributeValue> root = {
      {"format", std::string("ftrain.tokens")}, {"format_version", int64_t{1}}, {"seq_len", int64_t{8}},
      {"vocab_size", int64_t{100}},              {"eos_id", int64_t{0}},         {"pad_id", int64_t{-1}},
      {"tokenizer", std::string("crafted")},     {"task", std::string("causal_lm")}};
  bool with_split = true;
  std::map<std::string, AttributeValue> split_attributes = {{"num_documents", int64_t{3}}};
  std::map<std::string, CraftedDataset> datasets = {{"input_ids", {H5T_STD_I32LE, {4, 8}}},
                                                    {"loss_mask", {H5T_STD_U8LE, {4, 8}}}};
  bool compressed = false;  // gzip in chunks of 3 rows instead of contiguous storage
};

void write_attribute(hid_t object, const std::string& name, const AttributeValue& value) {
  const hid_t space = H5Screate(H5S_SCALAR);
  if (const auto* integer = std::get_if<int64_t>(&value)) {
    const hid_t attribute = H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_INT64, integer);
    H5Aclose(attribute);
  } else if (const auto* real = std::get_if<double>(&value)) {
    const hid_t attribute = H5Acreate2(object, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_DOUBLE, real);
    H5Aclose(attribute);
  } else {
    // Fixed-length string, unlike the writer's variable-length ones: readers accept both.
    const std::string& text = std::get<std::string>(value);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, text.size() + 1);
    const hid_t attribute = H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, type, text.c_str());
    H5Aclose(attribute);
    H5Tclose(type);
  }
  H5Sclose(space);
}

// Datasets holding (row * seq_len + t) % 100.
void write_crafted(const fs::path& path, const CraftedFile& spec) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  BOOST_REQUIRE(file >= 0);
  for (const auto& [name, value] : spec.root) write_attribute(file, name, value);
  if (spec.with_split) {
    const hid_t group = H5Gcreate2(file, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    for (const auto& [name, value] : spec.split_attributes) write_attribute(group, name, value);
    for (const auto& [name, dataset] : spec.datasets) {
      const hid_t space = H5Screate_simple(static_cast<int>(dataset.dims.size()), dataset.dims.data(), nullptr);
      const hid_t creation = H5Pcreate(H5P_DATASET_CREATE);
      if (spec.compressed) {
        std::vector<hsize_t> chunk = dataset.dims;
        chunk[0] = 3;
        H5Pset_chunk(creation, static_cast<int>(chunk.size()), chunk.data());
        H5Pset_deflate(creation, 6);
      }
      const hid_t id = H5Dcreate2(group, name.c_str(), dataset.file_type, space, H5P_DEFAULT, creation, H5P_DEFAULT);
      H5Pclose(creation);
      if (!dataset.written) {
        H5Dclose(id);
        H5Sclose(space);
        continue;
      }
      const hsize_t count = std::accumulate(dataset.dims.begin(), dataset.dims.end(), hsize_t{1}, std::multiplies<>());
      std::vector<int64_t> values(count);
      for (hsize_t i = 0; i < count; ++i) values[i] = static_cast<int64_t>(i % 100);
      if (H5Tget_class(dataset.file_type) == H5T_FLOAT) {
        std::vector<double> reals(values.begin(), values.end());
        H5Dwrite(id, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, reals.data());
      } else {
        H5Dwrite(id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
      }
      H5Dclose(id);
      H5Sclose(space);
    }
    H5Gclose(group);
  }
  H5Fclose(file);
}

DatasetInfo small_info() {
  DatasetInfo info;
  info.seq_len = 16;
  info.vocab_size = 1000;
  info.eos_id = 999;
  info.pad_id = -1;
  info.tokenizer = "/tokenizers/test";
  return info;
}

}  // namespace

// =======================================================================================

BOOST_AUTO_TEST_CASE(round_trip_every_field_across_appends_and_chunks) {
  ScratchDir dir;
  const fs::path output = dir / "round.h5";
  const DatasetInfo info = small_info();
  const int64_t seq_len = info.seq_len;
  const std::vector<int64_t> blocks = {21, 1, 0, 37};  // crosses 8-row chunks unevenly
  const int64_t total = std::accumulate(blocks.begin(), blocks.end(), int64_t{0});

  {
    WriterOptions options;
    options.rows_per_chunk = 8;
    TokenDatasetWriter writer(output, info, options);
    writer.create_split("train", SplitFields{true, true, LabelKind::kPerRow, true});
    writer.create_split("validation", SplitFields{false, false, LabelKind::kPerPosition, false, true});
    int64_t first = 0;
    for (const int64_t count : blocks) {
      std::vector<int32_t> ids;
      std::vector<uint8_t> loss, attention;
      std::vector<int64_t> labels;
      for (int64_t row = first; row < first + count; ++row) {
        for (int64_t t = 0; t < seq_len; ++t) {
          ids.push_back(testing::pattern_token(row, t));
          loss.push_back(testing::pattern_mask(row, t));
          attention.push_back(static_cast<uint8_t>(t < seq_len - row % 3));
        }
        labels.push_back(row % 5 - 1);
      }
      writer.append_rows("train", RowBlock{count, ids, loss, attention, labels, {}});
      first += count;
    }
    std::vector<int64_t> documents(7);
    std::iota(documents.begin(), documents.end(), 100);
    writer.append_document_index("train", documents);
    writer.set_split_attribute("train", format::kAttrNumDocuments, 7);
    writer.set_split_attribute("train", format::kAttrDroppedTokens, 5);

    std::vector<int32_t> ids(2 * seq_len, 3);
    std::vector<int64_t> token_labels(2 * seq_len, format::kIgnoreLabel);
    std::vector<uint8_t> types(2 * seq_len);
    for (std::size_t i = 0; i < types.size(); ++i) types[i] = static_cast<uint8_t>(i % 3 == 0);
    writer.append_rows("validation", RowBlock{2, ids, {}, {}, token_labels, types});
    writer.set_split_attribute("validation", format::kAttrNumDocuments, 1);
    BOOST_TEST(writer.num_rows("train") == total);
    BOOST_TEST(fs::exists(writer.temporary_path()));
    BOOST_TEST(!fs::exists(output));  // invisible until finish()
    writer.finish();
    BOOST_TEST(!fs::exists(writer.temporary_path()));
  }

  const DatasetInfo read_info = read_dataset_info(output);
  BOOST_TEST(read_info.format_version == format::kVersionPlain);
  BOOST_TEST(read_info.seq_len == seq_len);
  BOOST_TEST(read_info.vocab_size == 1000);
  BOOST_TEST(read_info.eos_id == 999);
  BOOST_TEST(read_info.pad_id == -1);
  BOOST_TEST(read_info.tokenizer == "/tokenizers/test");
  BOOST_TEST(read_info.task == "causal_lm");
  BOOST_TEST((list_splits(output) == std::vector<std::string>{"train", "validation"}));

  TokenDataset train(output, "train");
  BOOST_TEST(train.num_rows() == total);
  BOOST_TEST(train.num_documents() == 7);
  BOOST_TEST(train.has_loss_mask());
  BOOST_TEST(train.has_attention_mask());
  BOOST_TEST((train.labels() == LabelKind::kPerRow));

  // Unordered, repeated rows spanning several chunks and both ends.
  const std::vector<int64_t> rows = {58, 0, 17, 17, 22, 21, 23, 3, 58, 1};
  std::vector<int32_t> ids(rows.size() * seq_len);
  std::vector<uint8_t> loss(ids.size()), attention(ids.size());
  std::vector<int64_t> labels(rows.size());
  train.read_rows(rows, ids.data());
  train.read_loss_mask(rows, loss.data());
  train.read_attention_mask(rows, attention.data());
  train.read_labels(rows, labels.data());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    BOOST_TEST_CONTEXT("row " << rows[i]) {
      for (int64_t t = 0; t < seq_len; ++t) {
        BOOST_TEST(ids[i * seq_len + t] == testing::pattern_token(rows[i], t));
        BOOST_TEST(loss[i * seq_len + t] == testing::pattern_mask(rows[i], t));
        BOOST_TEST(attention[i * seq_len + t] == static_cast<uint8_t>(t < seq_len - rows[i] % 3));
      }
      BOOST_TEST(labels[i] == rows[i] % 5 - 1);
    }
  }
  // The whole split in order, the path that reads one run.
  std::vector<int64_t> all(total);
  std::iota(all.begin(), all.end(), 0);
  std::vector<int32_t> every(total * seq_len);
  train.read_rows(all, every.data());
  for (int64_t row = 0; row < total; ++row) {
    for (int64_t t = 0; t < seq_len; ++t) BOOST_TEST(every[row * seq_len + t] == testing::pattern_token(row, t));
  }

  const std::vector<int64_t> outside = {total};
  const std::string message = error_of([&] { train.read_rows(outside, ids.data()); });
  BOOST_TEST(contains(message, output.string()));
  BOOST_TEST(contains(message, "row " + std::to_string(total) + " is outside"));

  TokenDataset validation(output, "validation");
  BOOST_TEST(validation.num_rows() == 2);
  BOOST_TEST(!validation.has_loss_mask());
  BOOST_TEST((validation.labels() == LabelKind::kPerPosition));
  std::vector<int64_t> token_labels(2 * seq_len);
  const std::vector<int64_t> both = {1, 0};
  validation.read_labels(both, token_labels.data());
  for (const int64_t label : token_labels) BOOST_TEST(label == format::kIgnoreLabel);
  BOOST_TEST(!train.has_token_type_ids());
  BOOST_REQUIRE(validation.has_token_type_ids());
  std::vector<uint8_t> types(2 * seq_len);
  validation.read_token_type_ids(both, types.data());  // rows swapped
  for (int64_t i = 0; i < 2 * seq_len; ++i) {
    const int64_t stored = (i + seq_len) % (2 * seq_len);
    BOOST_TEST(types[i] == static_cast<uint8_t>(stored % 3 == 0));
  }
}

BOOST_AUTO_TEST_CASE(reads_files_written_by_other_tools) {
  // Contiguous storage, fixed-length string attributes: what a script might produce.
  // Also gzip-compressed chunks, which are read through the chunk cache.
  ScratchDir dir;
  for (const bool compressed : {false, true}) {
    BOOST_TEST_CONTEXT("compressed " << compressed) {
      const fs::path path = dir / "crafted.h5";
      CraftedFile spec;
      spec.compressed = compressed;
      spec.datasets["input_ids"].dims = {10, 8};
      spec.datasets["loss_mask"].dims = {10, 8};
      write_crafted(path, spec);
      TokenDataset dataset(path, "train");
      BOOST_TEST(dataset.num_rows() == 10);
      BOOST_TEST(dataset.info().tokenizer == "crafted");
      const std::vector<int64_t> rows = {9, 3, 1, 2, 3};
      std::vector<int32_t> ids(rows.size() * 8);
      std::vector<uint8_t> mask(ids.size());
      dataset.read_rows(rows, ids.data());
      dataset.read_loss_mask(rows, mask.data());
      for (std::size_t i = 0; i < rows.size(); ++i) {
        for (int64_t t = 0; t < 8; ++t) {
          BOOST_TEST(ids[i * 8 + t] == (rows[i] * 8 + t) % 100);
          BOOST_TEST(mask[i * 8 + t] == (rows[i] * 8 + t) % 100);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(malformed_files_fail_with_the_file_and_the_problem) {
  ScratchDir dir;
  struct Case {
    std::string name;
    std::function<void(CraftedFile&)> change;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"missing seq_len", [](CraftedFile& f) { f.root.erase("seq_len"); }, "attribute '/seq_len' missing"},
      {"missing format", [](CraftedFile& f) { f.root.erase("format"); }, "attribute '/format' missing"},
      {"other format", [](CraftedFile& f) { f.root["format"] = std::string("other.tokens"); },
       "not an ftrain token dataset"},
      {"newer version", [](CraftedFile& f) { f.root["format_version"] = int64_t{3}; },
       "format_version 3 is newer than this ftrain reads (2)"},
      {"seq_len as string", [](CraftedFile& f) { f.root["seq_len"] = std::string("8"); },
       "attribute '/seq_len' is string, expected an integer"},
      {"seq_len as float", [](CraftedFile& f) { f.root["seq_len"] = 8.0; },
       "attribute '/seq_len' is float64, expected an integer"},
      {"task as integer", [](CraftedFile& f) { f.root["task"] = int64_t{1}; },
       "attribute '/task' is int64, expected a string"},
      {"eos beyond vocabulary", [](CraftedFile& f) { f.root["eos_id"] = int64_t{100}; }, "'eos_id'"},
      {"missing split", [](CraftedFile& f) { f.with_split = false; }, "split '/train' missing (splits in the file: none)"},
      {"missing num_documents", [](CraftedFile& f) { f.split_attributes.clear(); },
       "attribute '/train/num_documents' missing"},
      {"missing input_ids", [](CraftedFile& f) { f.datasets.erase("input_ids"); },
       "dataset '/train/input_ids' missing"},
      {"input_ids rank 1", [](CraftedFile& f) { f.datasets["input_ids"].dims = {32}; },
       "dataset '/train/input_ids' has 1 dimension, expected 2"},
      {"input_ids rank 3", [](CraftedFile& f) { f.datasets["input_ids"].dims = {4, 8, 1}; },
       "dataset '/train/input_ids' has 3 dimensions"},
      {"input_ids int64", [](CraftedFile& f) { f.datasets["input_ids"].file_type = H5T_STD_I64LE; },
       "dataset '/train/input_ids' has dtype int64, expected int32"},
      {"input_ids float", [](CraftedFile& f) { f.datasets["input_ids"].file_type = H5T_IEEE_F32LE; },
       "has dtype float32, expected int32"},
      {"input_ids unsigned", [](CraftedFile& f) { f.datasets["input_ids"].file_type = H5T_STD_U32LE; },
       "has dtype uint32, expected int32"},
      {"seq_len mismatch", [](CraftedFile& f) { f.datasets["input_ids"].dims = {4, 6}; },
       "dataset '/train/input_ids' has rows of 6 tokens, but attribute '/seq_len' is 8"},
      {"loss_mask dtype", [](CraftedFile& f) { f.datasets["loss_mask"].file_type = H5T_STD_I32LE; },
       "dataset '/train/loss_mask' has dtype int32, expected uint8"},
      {"loss_mask shape", [](CraftedFile& f) { f.datasets["loss_mask"].dims = {3, 8}; },
       "dataset '/train/loss_mask' has shape (3, 8), expected (4, 8)"},
      {"labels shape", [](CraftedFile& f) { f.datasets["labels"] = {H5T_STD_I64LE, {5}}; },
       "dataset '/train/labels' has shape (5,), expected (4,), (4, 2) or (4, 8)"},
      // Question answering's three datasets come together, each of its shape.
      {"offsets alone", [](CraftedFile& f) { f.datasets["offset_mapping"] = {H5T_STD_I32LE, {4, 16}}; },
       "split '/train' has only some of offset_mapping, example_index and examples"},
      {"offsets shape",
       [](CraftedFile& f) {
         f.datasets["offset_mapping"] = {H5T_STD_I32LE, {4, 8}};
         f.datasets["example_index"] = {H5T_STD_I64LE, {4}};
         f.datasets["examples"] = {H5T_STD_U8LE, {10}};
       },
       "dataset '/train/offset_mapping' has shape (4, 8), expected (4, 16)"},
      {"example_index shape",
       [](CraftedFile& f) {
         f.datasets["offset_mapping"] = {H5T_STD_I32LE, {4, 16}};
         f.datasets["example_index"] = {H5T_STD_I64LE, {3}};
         f.datasets["examples"] = {H5T_STD_U8LE, {10}};
       },
       "dataset '/train/example_index' has shape (3,), expected (4,)"},
      // Readers size buffers and sample orders by the shape: it must be backed by the file.
      {"rows never stored",
       [](CraftedFile& f) {
         f.datasets["input_ids"] = {H5T_STD_I32LE, {hsize_t{1} << 30, 8}, false};
         f.datasets.erase("loss_mask");
       },
       "dataset '/train/input_ids' has shape (1073741824, 8), 34359738368 bytes, but the file stores 0 for it"},
      {"seq_len past the longest row", [](CraftedFile& f) { f.root["seq_len"] = int64_t{1} << 21; },
       "'seq_len' must be at most 1048576"},
  };
  for (const Case& c : cases) {
    BOOST_TEST_CONTEXT(c.name) {
      CraftedFile spec;
      c.change(spec);
      const fs::path path = dir / "bad.h5";
      write_crafted(path, spec);
      const std::string message = error_of([&] { TokenDataset(path, "train"); });
      BOOST_TEST(contains(message, path.string() + ": "), message);
      BOOST_TEST(contains(message, c.expected), message);
    }
  }
}

BOOST_AUTO_TEST_CASE(missing_split_lists_the_splits_present) {
  ScratchDir dir;
  const fs::path path = dir / "data.h5";
  testing::write_pattern_dataset(path, {});
  const std::string message = error_of([&] { TokenDataset(path, "validation"); });
  BOOST_TEST(contains(message, path.string() + ": split '/validation' missing (splits in the file: train)"), message);
}

BOOST_AUTO_TEST_CASE(missing_non_hdf5_and_truncated_files_are_named) {
  ScratchDir dir;
  const fs::path missing = dir / "absent.h5";
  std::string message = error_of([&] { TokenDataset(missing, "train"); });
  BOOST_TEST(message == missing.string() + ": no such file");

  const fs::path text = dir / "notes.h5";
  write_text(text, "this is a text file, not HDF5\n");
  message = error_of([&] { TokenDataset(text, "train"); });
  BOOST_TEST(contains(message, text.string() + ": not an HDF5 file"), message);

  const fs::path empty = dir / "empty.h5";
  write_text(empty, "");
  message = error_of([&] { read_dataset_info(empty); });
  BOOST_TEST(contains(message, empty.string() + ": not an HDF5 file"), message);

  const fs::path truncated = dir / "truncated.h5";
  testing::PatternOptions options;
  options.num_rows = 200;
  options.seq_len = 64;
  testing::write_pattern_dataset(truncated, options);
  const auto size = fs::file_size(truncated);
  for (const auto keep : {size / 2, size - 1, std::uintmax_t{4096}}) {
    BOOST_TEST_CONTEXT("kept " << keep << " of " << size << " bytes") {
      const fs::path copy = dir / "cut.h5";
      fs::copy_file(truncated, copy, fs::copy_options::overwrite_existing);
      fs::resize_file(copy, keep);
      message = error_of([&] { TokenDataset(copy, "train"); });
      BOOST_TEST(contains(message, copy.string() + ": file is truncated"), message);
    }
  }
}

BOOST_AUTO_TEST_CASE(existing_output_is_never_replaced_unless_asked) {
  ScratchDir dir;
  const fs::path output = dir / "precious.h5";
  write_text(output, "earlier result");

  const std::string message = error_of([&] { TokenDatasetWriter(output, small_info()); });
  BOOST_TEST(contains(message, output.string() + ": already exists"), message);
  BOOST_TEST(read_text(output) == "earlier result");
  BOOST_TEST(!fs::exists(dir / "precious.h5.tmp"));

  // A writer abandoned before finish() leaves neither output nor temporary file.
  const fs::path fresh = dir / "fresh.h5";
  {
    TokenDatasetWriter writer(fresh, small_info());
    writer.create_split("train");
    std::vector<int32_t> ids(16, 1);
    writer.append_rows("train", RowBlock{1, ids, {}, {}, {}, {}});
    BOOST_TEST(fs::exists(writer.temporary_path()));
  }
  BOOST_TEST(!fs::exists(fresh));
  BOOST_TEST(!fs::exists(dir / "fresh.h5.tmp"));

  // A split without num_documents is refused at finish(); the old output stays.
  {
    WriterOptions replace;
    replace.overwrite = true;
    TokenDatasetWriter writer(output, small_info(), replace);
    writer.create_split("train");
    const std::string refused = error_of([&] { writer.finish(); });
    BOOST_TEST(contains(refused, "split '/train' has no num_documents attribute"), refused);
  }
  BOOST_TEST(read_text(output) == "earlier result");

  // Asked to, it replaces the file atomically.
  WriterOptions replace;
  replace.overwrite = true;
  TokenDatasetWriter writer(output, small_info(), replace);
  writer.create_split("train");
  std::vector<int32_t> ids(16, 7);
  writer.append_rows("train", RowBlock{1, ids, {}, {}, {}, {}});
  writer.set_split_attribute("train", format::kAttrNumDocuments, 1);
  writer.finish();
  BOOST_TEST(TokenDataset(output, "train").num_rows() == 1);
}

BOOST_AUTO_TEST_CASE(writer_rejects_bad_rows) {
  ScratchDir dir;
  TokenDatasetWriter writer(dir / "bad_rows.h5", small_info());
  writer.create_split("train", SplitFields{true, false, LabelKind::kNone, false});
  std::vector<int32_t> ids(32, 5);
  std::vector<uint8_t> mask(32, 1);
  ids[20] = 1000;  // vocab_size is 1000
  std::string message;
  try {
    writer.append_rows("train", RowBlock{2, ids, mask, {}, {}, {}});
  } catch (const std::invalid_argument& error) {
    message = error.what();
  }
  BOOST_TEST(contains(message, "token id 1000 in row 1 is outside [0, vocab_size = 1000)"), message);
  ids[20] = 4;
  BOOST_CHECK_THROW(writer.append_rows("train", RowBlock{2, ids, {}, {}, {}, {}}), std::invalid_argument);
  BOOST_CHECK_THROW(writer.append_rows("train", RowBlock{3, ids, mask, {}, {}, {}}), std::invalid_argument);
  BOOST_CHECK_THROW(writer.append_rows("test", RowBlock{2, ids, mask, {}, {}, {}}), std::runtime_error);
  BOOST_CHECK_THROW(writer.create_split("train"), std::runtime_error);
  BOOST_CHECK_THROW(writer.create_split("a/b"), std::runtime_error);
}

BOOST_AUTO_TEST_CASE(dataset_info_validation_names_the_attribute) {
  DatasetInfo info = small_info();
  info.seq_len = 0;
  BOOST_TEST(contains(error_of([&] { info.validate(); }), "'seq_len' must be >= 1"));
  info = small_info();
  info.pad_id = 1000;
  BOOST_TEST(contains(error_of([&] { info.validate(); }), "'pad_id'"));
  info = small_info();
  info.format_version = 3;
  BOOST_TEST(contains(error_of([&] { info.validate(); }), "'format_version'"));
}

// ---------------------------------------------------------------------------------------
// Packing

BOOST_AUTO_TEST_CASE(packer_joins_documents_with_eos_and_cuts_exact_rows) {
  // Documents of lengths 3, 0, 6 and 2 plus one EOS each: 14 tokens, seq_len 4, so 3 rows
  // and 2 dropped tokens.
  const std::vector<std::vector<int32_t>> documents = {{1, 2, 3}, {}, {4, 5, 6, 7, 8, 9}, {10, 11}};
  const int32_t eos = 99;
  std::vector<int32_t> stream;
  for (const auto& document : documents) {
    stream.insert(stream.end(), document.begin(), document.end());
    stream.push_back(eos);
  }
  for (const int64_t seq_len : {1, 4, 5, 14, 15}) {
    BOOST_TEST_CONTEXT("seq_len " << seq_len) {
      RowPacker packer(seq_len, eos);
      std::vector<int32_t> rows;
      for (const auto& document : documents) {
        packer.add_document(document);
        if (packer.ready_rows() > 0) {  // take in pieces, as ftrain-prep does
          const std::vector<int32_t> taken = packer.take_rows();
          rows.insert(rows.end(), taken.begin(), taken.end());
        }
      }
      const int64_t expected_rows = static_cast<int64_t>(stream.size()) / seq_len;
      BOOST_TEST(static_cast<int64_t>(rows.size()) == expected_rows * seq_len);
      BOOST_TEST(std::equal(rows.begin(), rows.end(), stream.begin()));
      BOOST_TEST(packer.pending_tokens() == static_cast<int64_t>(stream.size()) % seq_len);
      BOOST_TEST(packer.documents() == 4);
      BOOST_TEST(packer.tokens() == static_cast<int64_t>(stream.size()));
      BOOST_TEST(packer.take_rows().empty());
    }
  }
  BOOST_CHECK_THROW(RowPacker(0, 1), std::invalid_argument);
  BOOST_CHECK_THROW(RowPacker(4, -1), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// Documents

namespace {

std::vector<Document> read_all(const fs::path& path, DocumentReaderOptions options = {}) {
  DocumentReader reader(path, options);
  std::vector<Document> documents;
  Document document;
  while (reader.next(document)) documents.push_back(document);
  return documents;
}

}  // namespace

BOOST_AUTO_TEST_CASE(text_documents_by_line_and_by_paragraph) {
  ScratchDir dir;
  const fs::path path = dir / "corpus.txt";
  write_text(path, "\xEF\xBB\xBF" "first line\r\nsecond line\n\n  \t\nthird\nfourth");
  auto lines = read_all(path);
  BOOST_REQUIRE(lines.size() == 4u);
  BOOST_TEST(lines[0].text == "first line");
  BOOST_TEST(lines[1].text == "second line");
  BOOST_TEST(lines[2].text == "third");
  BOOST_TEST(lines[2].line == 5);
  BOOST_TEST(lines[3].text == "fourth");

  DocumentReaderOptions paragraphs;
  paragraphs.text_mode = TextMode::kParagraph;
  auto blocks = read_all(path, paragraphs);
  BOOST_REQUIRE(blocks.size() == 2u);
  BOOST_TEST(blocks[0].text == "first line\nsecond line");
  BOOST_TEST(blocks[0].line == 1);
  BOOST_TEST(blocks[1].text == "third\nfourth");
  BOOST_TEST(blocks[1].line == 5);
}

BOOST_AUTO_TEST_CASE(jsonl_documents_and_errors_name_file_and_line) {
  ScratchDir dir;
  const fs::path good = dir / "good.jsonl";
  write_text(good, "{\"text\": \"caf\\u00e9 \\\"quoted\\\"\", \"id\": 1}\n\n{\"text\": \"\"}\n{\"body\": 1, \"text\": \"two\"}\n");
  DocumentReader reader(good);
  Document document;
  BOOST_REQUIRE(reader.next(document));
  BOOST_TEST(document.text == "caf\xC3\xA9 \"quoted\"");
  BOOST_REQUIRE(reader.next(document));
  BOOST_TEST(document.text == "two");
  BOOST_TEST(document.line == 4);
  BOOST_TEST(!reader.next(document));
  BOOST_TEST(reader.skipped_empty() == 1);

  DocumentReaderOptions body;
  body.text_key = "body";
  const std::string wrong_type = error_of([&] { read_all(good, body); });
  BOOST_TEST(contains(wrong_type, good.string() + ":1: key 'body' missing"), wrong_type);

  const fs::path bad = dir / "bad.jsonl";
  write_text(bad, "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  std::string message = error_of([&] { read_all(bad); });
  BOOST_TEST(contains(message, bad.string() + ":2: malformed JSON"), message);

  write_text(bad, "{\"text\": \"ok\"}\n[1, 2]\n");
  message = error_of([&] { read_all(bad); });
  BOOST_TEST(contains(message, bad.string() + ":2: expected a JSON object, found array"), message);

  write_text(bad, "{\"text\": \"ok\"}\n{\"text\": 3}\n");
  message = error_of([&] { read_all(bad); });
  BOOST_TEST(contains(message, bad.string() + ":2: key 'text' is number, expected a string"), message);

  message = error_of([&] { DocumentReader(dir / "absent.jsonl"); });
  BOOST_TEST(message == (dir / "absent.jsonl").string() + ": no such file");
  message = error_of([&] { DocumentReader(dir / "corpus.csv"); });
  BOOST_TEST(contains(message, "unsupported input type '.csv'"), message);
}

BOOST_AUTO_TEST_SUITE_END()  // test_token_dataset
