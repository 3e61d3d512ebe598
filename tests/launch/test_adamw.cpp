#define BOOST_TEST_MODULE launch_adamw
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cmath>
#include <numbers>

#include "launch/adamw.h"

using namespace ftrain::launch;

// LibTorch's own AdamW is the reference: same hyper-parameters, same gradients, so
// parameters must agree after several steps (weight decay only on the matrix, as
// ftrain applies it, so the reference uses two parameter groups).
BOOST_AUTO_TEST_CASE(matches_libtorch_adamw) {
  torch::manual_seed(0);
  auto matrix = torch::randn({5, 3}, torch::requires_grad());
  auto bias = torch::randn({3}, torch::requires_grad());
  auto ref_matrix = matrix.detach().clone().requires_grad_();
  auto ref_bias = bias.detach().clone().requires_grad_();

  AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  AdamW ours(std::vector<std::pair<std::string, torch::Tensor>>{{"w", matrix}, {"b", bias}}, options);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ref_matrix},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{ref_bias},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW reference(std::move(groups), torch::optim::AdamWOptions(1e-2));

  auto input = torch::randn({7, 5});
  for (int step = 0; step < 6; ++step) {
    const double lr = 1e-2 * (step + 1) / 6.0;  // a changing lr, as the schedule gives
    for (auto& group : reference.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    (input.matmul(matrix) + bias).pow(2).sum().backward();
    (input.matmul(ref_matrix) + ref_bias).pow(2).sum().backward();
    ours.step(lr);
    ours.zero_grad();
    reference.step();
    reference.zero_grad();
  }
  BOOST_TEST(torch::allclose(matrix, ref_matrix, 1e-6, 1e-7));
  BOOST_TEST(torch::allclose(bias, ref_bias, 1e-6, 1e-7));
  BOOST_TEST(!torch::allclose(matrix, ref_matrix.detach() * 0));  // the parameters did move
  BOOST_TEST(ours.step_count() == 6);
  BOOST_TEST(ours.named_state().size() == 4u);
}

BOOST_AUTO_TEST_CASE(warmup_then_cosine_and_linear_decay) {
  LrScheduleOptions s{1.0, 0.1, 10, 110, "cosine"};
  BOOST_TEST(learning_rate(s, 1) == 0.1, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, 5) == 0.5, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, 10) == 1.0, boost::test_tools::tolerance(1e-12));
  // Halfway through the decay the cosine is at the midpoint of lr and min_lr.
  BOOST_TEST(learning_rate(s, 60) == 0.55, boost::test_tools::tolerance(1e-12));
  const double quarter = 0.1 + 0.5 * (1 + std::cos(std::numbers::pi * 0.25)) * 0.9;
  BOOST_TEST(learning_rate(s, 35) == quarter, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, 110) == 0.1, boost::test_tools::tolerance(1e-12));
  s.decay = "linear";
  BOOST_TEST(learning_rate(s, 60) == 0.55, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, 85) == 0.1 + 0.25 * 0.9, boost::test_tools::tolerance(1e-12));
  s.decay = "constant";
  BOOST_TEST(learning_rate(s, 100) == 1.0, boost::test_tools::tolerance(1e-12));
}
