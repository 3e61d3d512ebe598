#define BOOST_TEST_MODULE bpe_tokenizer
#include <boost/test/unit_test.hpp>

#include "data/bpe_tokenizer.h"

BOOST_AUTO_TEST_CASE(missing_directory_is_named) {
  BOOST_CHECK_THROW(ftrain::data::BpeTokenizer::from_directory("/nonexistent/tokenizer"), std::runtime_error);
}
