// AtomicFile and AppendFile (data/durable_file.h): what each leaves on disk, and that a
// write the kernel refuses is reported with its reason. /dev/full refuses every write
// with ENOSPC, as a full disk does.
#include <boost/test/unit_test.hpp>

#include "data/durable_file.h"
#include "tests/data/dataset_fixtures.h"

BOOST_AUTO_TEST_SUITE(test_durable_file)

namespace fs = std::filesystem;
using namespace ftrain::data;
using ftrain::data::testing::read_text;
using ftrain::data::testing::ScratchDir;

namespace {

bool names(const std::exception& error, const std::string& what) {
  return std::string(error.what()).find(what) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(append_file_keeps_what_was_there) {
  ScratchDir dir;
  const fs::path path = dir.path() / "log.jsonl";
  { AppendFile(path).write("one\n"); }
  {
    AppendFile log(path);
    log.write("two\n");
    log.write("three\n");
  }
  BOOST_TEST(read_text(path) == "one\ntwo\nthree\n");
}

BOOST_AUTO_TEST_CASE(append_file_names_a_full_disk) {
  AppendFile full("/dev/full");
  BOOST_CHECK_EXCEPTION(full.write("x"), std::runtime_error, [](const std::runtime_error& error) {
    return names(error, "/dev/full") && names(error, "No space left on device");
  });
}

BOOST_AUTO_TEST_CASE(append_file_names_a_directory_it_cannot_open) {
  ScratchDir dir;
  const fs::path path = dir.path() / "missing" / "log.jsonl";
  BOOST_CHECK_EXCEPTION(AppendFile{path}, std::runtime_error, [&](const std::runtime_error& error) {
    return names(error, path.string()) && names(error, "No such file or directory");
  });
}

BOOST_AUTO_TEST_CASE(atomic_file_replaces_whole_or_not_at_all) {
  ScratchDir dir;
  const fs::path path = dir.path() / "latest";
  write_file_atomically(path, "step_1\n");
  {
    AtomicFile abandoned(path);
    abandoned.write("step_2", 6);
    BOOST_TEST(read_text(path) == "step_1\n");
  }
  BOOST_TEST(read_text(path) == "step_1\n");
  BOOST_TEST(!fs::exists(dir.path() / "latest.tmp"));
  write_file_atomically(path, "step_3\n");
  BOOST_TEST(read_text(path) == "step_3\n");
  BOOST_TEST(!fs::exists(dir.path() / "latest.tmp"));
}

BOOST_AUTO_TEST_SUITE_END()  // test_durable_file
