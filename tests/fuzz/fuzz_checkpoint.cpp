// A checkpoint's index (state.h5): its manifest, the JSON list of every tensor's dtype,
// global shape and pieces (which rank file, which dataset, which part, checksums).
// The harness saves a small real checkpoint once; each input replaces its manifest,
// then the checkpoint is verified and every tensor it names is read.
#include <hdf5.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "launch/checkpoint/store.h"
#include "tests/fuzz/fuzz_support.h"

namespace fs = std::filesystem;
using namespace ftrain;

namespace {

// The directory of a checkpoint of two tensors, and its state.h5 as saved.
struct Saved {
  fs::path checkpoint;
  fs::path pristine_index;
};

const Saved& saved() {
  static const Saved once = [] {
    torch::manual_seed(0);
    launch::CheckpointStore store(fuzz::scratch_dir() / "checkpoints", 1);
    Saved s;
    s.checkpoint = store.save(1, {{"weight", torch::randn({5, 3})}, {"step_count", torch::arange(4)}},
                              nlohmann::json{{"fuzz", true}});
    s.pristine_index = fuzz::scratch_dir() / "state.h5.pristine";
    fs::copy_file(s.checkpoint / "state.h5", s.pristine_index);
    return s;
  }();
  return once;
}

// state.h5 with its manifest dataset replaced by `manifest` (a fixed-length string, as
// the store writes it).
void replace_manifest(const fs::path& index, std::string_view manifest) {
  hid_t file = H5Fopen(index.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  H5Ldelete(file, "manifest", H5P_DEFAULT);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(1, manifest.size()));
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t dataset = H5Dcreate2(file, "manifest", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  const std::string bytes(manifest.empty() ? std::string(1, '\0') : std::string(manifest));
  H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
  H5Dclose(dataset), H5Sclose(space), H5Tclose(type), H5Fclose(file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Saved& s = saved();
  const fs::path index = s.checkpoint / "state.h5";
  fs::copy_file(s.pristine_index, index, fs::copy_options::overwrite_existing);
  replace_manifest(index, fuzz::as_text(data, size));
  const std::string where = s.checkpoint.string();
  std::string problem;
  if (!launch::verify_checkpoint(s.checkpoint, &problem) && problem.find(where) == std::string::npos)
    fuzz::report_finding(where, "verify's problem does not name the checkpoint: " + problem);
  fuzz::refusals_name(where, [&] {
    for (const std::string& name : launch::checkpoint_tensor_names(s.checkpoint))
      (void)launch::read_checkpoint_tensor(s.checkpoint, name).sum().item<double>();
  });
  return 0;
}
