#define BOOST_TEST_MODULE launch_adamw
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cmath>
#include <numbers>

#include "launch/optim/adamw.h"
#include "launch/optim/schedule.h"

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

  OptimOptions options;
  options.beta1 = 0.9, options.beta2 = 0.95, options.eps = 1e-8, options.weight_decay = 0.1;
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
  OptimOptions s;
  s.lr = 1.0, s.min_lr = 0.1, s.warmup_steps = 10, s.decay = Decay::cosine;
  const int64_t total = 110;
  BOOST_TEST(learning_rate(s, total, 1) == 0.1, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, total, 5) == 0.5, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, total, 10) == 1.0, boost::test_tools::tolerance(1e-12));
  // Halfway through the decay the cosine is at the midpoint of lr and min_lr.
  BOOST_TEST(learning_rate(s, total, 60) == 0.55, boost::test_tools::tolerance(1e-12));
  const double quarter = 0.1 + 0.5 * (1 + std::cos(std::numbers::pi * 0.25)) * 0.9;
  BOOST_TEST(learning_rate(s, total, 35) == quarter, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, total, 110) == 0.1, boost::test_tools::tolerance(1e-12));
  s.decay = Decay::linear;
  BOOST_TEST(learning_rate(s, total, 60) == 0.55, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(learning_rate(s, total, 85) == 0.1 + 0.25 * 0.9, boost::test_tools::tolerance(1e-12));
  s.decay = Decay::constant;
  BOOST_TEST(learning_rate(s, total, 100) == 1.0, boost::test_tools::tolerance(1e-12));
}

// A frozen parameter is untouched (no decay either), and once unfrozen it follows
// exactly the trajectory of a fresh optimizer that starts at that moment: its bias
// correction counts its own updates, not the optimizer's steps.
BOOST_AUTO_TEST_CASE(frozen_slots_stay_and_start_fresh_when_unfrozen) {
  torch::manual_seed(3);
  auto body = torch::randn({5, 3}).requires_grad_();
  auto head = torch::randn({3}).requires_grad_();
  const auto body_start = body.detach().clone();
  OptimOptions options;
  options.beta1 = 0.9, options.beta2 = 0.95, options.eps = 1e-8, options.weight_decay = 0.1;
  AdamW ours(std::vector<std::pair<std::string, torch::Tensor>>{{"body", body}, {"head", head}}, options);
  auto input = torch::randn({4, 5});
  auto loss_of = [&](const torch::Tensor& b, const torch::Tensor& h) { return input.matmul(b).matmul(h).pow(2).sum(); };

  ours.set_frozen([](const std::string& name) { return name == "body"; });
  for (int step = 0; step < 3; ++step) {
    loss_of(body, head).backward();
    ours.step(1e-2);
    ours.zero_grad();
  }
  BOOST_TEST(torch::equal(body.detach(), body_start));
  BOOST_TEST(!torch::equal(head.detach(), head.detach() * 0));

  // From here on the body must move as under a new optimizer given only the body.
  auto ref_body = body.detach().clone().requires_grad_();
  auto ref_head = head.detach().clone();  // the head is a constant for the reference
  AdamW reference(std::vector<std::pair<std::string, torch::Tensor>>{{"body", ref_body}}, options);
  ours.set_frozen({});
  ours.set_frozen([](const std::string& name) { return name == "head"; });  // now only the body trains
  for (int step = 0; step < 4; ++step) {
    loss_of(body, head).backward();
    loss_of(ref_body, ref_head).backward();
    ours.step(1e-2);
    reference.step(1e-2);
    ours.zero_grad();
    reference.zero_grad();
  }
  BOOST_TEST(torch::allclose(body, ref_body, 1e-6, 1e-7));
  BOOST_TEST(!torch::allclose(body, body_start, 1e-3, 1e-3));
  BOOST_TEST(ours.step_count() == 7);

  // A resumed optimizer with the same moments and per-slot update counts takes the same
  // next step; with the optimizer's step count instead it would not.
  auto resumed_body = body.detach().clone().requires_grad_();
  AdamW resumed(std::vector<std::pair<std::string, torch::Tensor>>{{"body", resumed_body}}, options);
  {
    torch::NoGradGuard no_grad;
    resumed.exp_avgs()[0].copy_(ours.exp_avgs()[0]);
    resumed.exp_avg_sqs()[0].copy_(ours.exp_avg_sqs()[0]);
  }
  resumed.set_step_count(7, [](const std::string&) { return 4; });
  loss_of(body, head).backward();
  loss_of(resumed_body, head.detach()).backward();
  ours.step(1e-2);
  resumed.step(1e-2);
  BOOST_TEST(torch::allclose(body, resumed_body, 1e-6, 1e-7));
}
