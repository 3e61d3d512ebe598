#include <boost/test/unit_test.hpp>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "launch/precision.h"

BOOST_AUTO_TEST_SUITE(test_precision)

using namespace ftrain::launch;

// Names are parsed in launch/options.cpp (test_options refuses "fp8").
BOOST_AUTO_TEST_CASE(precisions_map_to_autocast_dtypes) {
  BOOST_TEST(!compute_dtype(Precision::fp32).has_value());
  BOOST_TEST((compute_dtype(Precision::bf16) == c10::ScalarType::BFloat16));
  BOOST_TEST((compute_dtype(Precision::fp16) == c10::ScalarType::Half));
}

BOOST_AUTO_TEST_CASE(autocast_scope_runs_matmuls_in_the_dtype_and_restores_the_state) {
  auto a = torch::randn({4, 8});
  auto b = torch::randn({8, 3});
  BOOST_TEST(!at::autocast::is_autocast_enabled(at::kCPU));
  {
    AutocastScope scope(at::kCPU, c10::ScalarType::BFloat16);
    BOOST_TEST(at::autocast::is_autocast_enabled(at::kCPU));
    auto product = torch::mm(a, b);
    BOOST_TEST((product.scalar_type() == torch::kBFloat16));
    // Same numbers as rounding the inputs to bf16 first.
    BOOST_TEST(torch::equal(product, torch::mm(a.to(torch::kBFloat16), b.to(torch::kBFloat16))));
  }
  BOOST_TEST(!at::autocast::is_autocast_enabled(at::kCPU));
  BOOST_TEST((torch::mm(a, b).scalar_type() == torch::kFloat32));
  {
    AutocastScope none(at::kCPU, std::nullopt);
    BOOST_TEST((torch::mm(a, b).scalar_type() == torch::kFloat32));
  }
}

BOOST_AUTO_TEST_CASE(loss_scale_halves_on_overflow_and_doubles_after_the_window) {
  LossScaler scaler(true, 1024, 3);
  BOOST_TEST(scaler.scale() == 1024);
  BOOST_TEST(!scaler.update(false));  // overflow: skip, halve
  BOOST_TEST(scaler.scale() == 512);
  BOOST_TEST(scaler.update(true));
  BOOST_TEST(scaler.update(true));
  BOOST_TEST(scaler.scale() == 512);
  BOOST_TEST(scaler.update(true));  // third finite step in a row: double
  BOOST_TEST(scaler.scale() == 1024);
  BOOST_TEST(scaler.good_steps() == 0);
  BOOST_TEST(scaler.update(true));
  BOOST_TEST(!scaler.update(false));  // an overflow resets the count
  BOOST_TEST(scaler.good_steps() == 0);
  BOOST_TEST(scaler.scale() == 512);

  LossScaler resumed(true, 65536, 3);
  resumed.restore(512, 2);
  BOOST_TEST(resumed.update(true));
  BOOST_TEST(resumed.scale() == 1024);

  LossScaler off(false, 1024, 3);
  BOOST_TEST(off.scale() == 1);
  BOOST_TEST(off.update(false));  // without scaling every step is taken
}

BOOST_AUTO_TEST_SUITE_END()  // test_precision
