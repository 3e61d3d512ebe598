#include "data/hdf5_handle.h"

namespace ftrain::data::hdf5 {

namespace {

herr_t keep_innermost(unsigned, const H5E_error2_t* error, void* client_data) {
  // Walking downward, the last entry visited is where the error was first detected,
  // which is the specific one ("truncated file", "file signature not found").
  if (error && error->desc && error->desc[0] != '\0') {
    *static_cast<std::string*>(client_data) = error->desc;
  }
  return 0;
}

}  // namespace

std::string last_error() {
  std::string message;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_innermost, &message);
  return message;
}

}  // namespace ftrain::data::hdf5
