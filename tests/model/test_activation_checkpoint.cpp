// Activation checkpointing (model/activation_checkpoint.h) through the block runners
// of tiny GPT-2, Llama, BERT and T5 models with dropout: the loss and every parameter
// gradient must be those of the plain model, for one micro-batch and for gradients
// accumulated over two, in fp32 and under CPU bf16 autocast. Equal masks in the
// recomputation are what makes this hold with dropout on.
#include <boost/test/unit_test.hpp>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/activation_checkpoint.h"
#include "model/bert.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model/t5.h"

BOOST_AUTO_TEST_SUITE(test_activation_checkpoint)

namespace model = ftrain::model;
namespace F = torch::nn::functional;

namespace {

model::Gpt2Config tiny_gpt2() {
  model::Gpt2Config config;
  config.vocab_size = 51;
  config.n_positions = 16;
  config.n_embd = 32;
  config.n_layer = 3;
  config.n_head = 4;
  config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.1;
  return config;
}

model::LlamaConfig tiny_llama() {
  model::LlamaConfig config;
  config.vocab_size = 51;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 3;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.max_position_embeddings = 32;
  config.attention_dropout = 0.1;
  return config;
}

model::BertConfig tiny_bert() {
  model::BertConfig config;
  config.vocab_size = 51;
  config.hidden_size = 32;
  config.num_hidden_layers = 3;
  config.num_attention_heads = 4;
  config.intermediate_size = 48;
  config.max_position_embeddings = 16;
  return config;
}

// T5 v1.0 (relu, head tied and scaled) or v1.1 (gated GELU, its own head): two encoder
// and three decoder blocks.
model::T5Config tiny_t5(bool gated_untied) {
  model::T5Config config;
  config.vocab_size = 51;
  config.d_model = 32;
  config.d_kv = 8;
  config.d_ff = 48;
  config.num_layers = 2;
  config.num_decoder_layers = 3;
  config.num_heads = 4;
  config.relative_attention_num_buckets = 8;
  config.relative_attention_max_distance = 16;
  config.dropout_rate = 0.1;
  if (gated_untied) {
    config.feed_forward_proj = "gated-gelu";
    config.tie_word_embeddings = false;
    config.scale_decoder_outputs = false;
  }
  return config;
}

// CPU autocast to `dtype` while alive, as the trainer's forward runs.
class CpuAutocast {
 public:
  explicit CpuAutocast(std::optional<at::ScalarType> dtype) : on_(dtype.has_value()) {
    if (!on_) return;
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
    at::autocast::set_autocast_dtype(c10::DeviceType::CPU, *dtype);
    at::autocast::increment_nesting();
  }
  ~CpuAutocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
  }

 private:
  bool on_;
};

struct Step {
  std::vector<double> losses;
  std::vector<std::pair<std::string, torch::Tensor>> grads;
};

// One training step over `micro_batches` (B, T) ids with gradients accumulated; the
// random stream starts from the same seed every time.
template <class Model>
Step run_step(Model& net, const std::function<torch::Tensor(Model&, const torch::Tensor&)>& loss_of,
              const std::vector<torch::Tensor>& micro_batches, model::BlockRunner runner,
              std::optional<at::ScalarType> autocast = std::nullopt) {
  net->train();
  net->zero_grad();
  net->set_block_runner(std::move(runner));
  torch::manual_seed(1234);
  Step step;
  for (const torch::Tensor& ids : micro_batches) {
    torch::Tensor loss;
    {
      CpuAutocast scope(autocast);
      loss = loss_of(net, ids);
    }
    loss.backward();
    step.losses.push_back(loss.item<double>());
  }
  for (const auto& item : net->named_parameters())
    step.grads.emplace_back(item.key(), item.value().grad().defined() ? item.value().grad().clone() : torch::Tensor());
  net->set_block_runner({});
  return step;
}

// A runner around checkpoint_blocks that counts blocks whose output hangs off the
// checkpointing function, so the test knows the recomputation path really ran.
model::BlockRunner counting_checkpoint(int& checkpointed) {
  return [&checkpointed, inner = model::checkpoint_blocks()](std::size_t i, const at::Tensor& x,
                                                              const model::BlockForward& block) {
    at::Tensor y = inner(i, x, block);
    if (y.grad_fn() && y.grad_fn()->name().find("CheckpointFunction") != std::string::npos) ++checkpointed;
    return y;
  };
}

void check_same(const Step& actual, const Step& expected, double tolerance) {
  BOOST_TEST_REQUIRE(actual.losses.size() == expected.losses.size());
  for (size_t m = 0; m < actual.losses.size(); ++m)
    BOOST_TEST(std::abs(actual.losses[m] - expected.losses[m]) <= tolerance * std::max(1.0, std::abs(expected.losses[m])),
               "loss of micro-batch " << m << ": " << actual.losses[m] << " vs " << expected.losses[m]);
  BOOST_TEST_REQUIRE(actual.grads.size() == expected.grads.size());
  int compared = 0;
  for (size_t k = 0; k < actual.grads.size(); ++k) {
    const auto& [name, grad] = actual.grads[k];
    const torch::Tensor& reference = expected.grads[k].second;
    BOOST_TEST_REQUIRE(grad.defined() == reference.defined(), name);
    if (!grad.defined()) continue;
    const double scale = std::max(1.0, reference.abs().max().item<double>());
    const double error = (grad - reference).abs().max().item<double>();
    BOOST_TEST(error <= tolerance * scale, name << ": max |difference| " << error);
    ++compared;
  }
  BOOST_TEST(compared > 0);
}

template <class Model>
void check_checkpointing(Model& net, const std::function<torch::Tensor(Model&, const torch::Tensor&)>& loss_of,
                         int64_t vocab, int64_t blocks, std::optional<at::ScalarType> autocast = std::nullopt) {
  torch::manual_seed(7);
  const std::vector<torch::Tensor> batches = {torch::randint(vocab, {2, 12}), torch::randint(vocab, {2, 12})};
  for (size_t micro = 1; micro <= 2; ++micro) {
    const std::vector<torch::Tensor> used(batches.begin(), batches.begin() + micro);
    const Step plain = run_step<Model>(net, loss_of, used, {}, autocast);
    int checkpointed = 0;
    const Step recomputed = run_step<Model>(net, loss_of, used, counting_checkpoint(checkpointed), autocast);
    BOOST_TEST(checkpointed == blocks * static_cast<int64_t>(micro));
    BOOST_TEST_CONTEXT("micro-batches " << micro) { check_same(recomputed, plain, 1e-6); }
    // Dropout is really on: without it the loss differs.
    net->eval();
    double eval_loss = 0;
    {
      torch::NoGradGuard no_grad;
      CpuAutocast scope(autocast);
      eval_loss = loss_of(net, used.front()).template item<double>();
    }
    BOOST_TEST(eval_loss != plain.losses.front());
  }
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& ids) {
  using torch::indexing::Slice;
  const int64_t V = logits.size(-1);
  return F::cross_entropy(logits.index({Slice(), Slice(0, -1)}).reshape({-1, V}).to(torch::kFloat),
                          ids.index({Slice(), Slice(1)}).reshape({-1}));
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_pass_through_runner_changes_nothing) {
  torch::manual_seed(3);
  model::Gpt2 net(tiny_gpt2());
  net->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = torch::randint(51, {2, 10});
  const torch::Tensor plain = net->forward(ids);
  std::vector<std::size_t> seen;
  net->set_block_runner([&seen](std::size_t i, const at::Tensor& x, const model::BlockForward& block) {
    seen.push_back(i);
    return block(x);
  });
  BOOST_TEST(torch::equal(net->forward(ids), plain));
  BOOST_TEST(seen == (std::vector<std::size_t>{0, 1, 2}));
  BOOST_TEST(net->blocks().size() == 3u);
  BOOST_TEST(net->blocks()[1].get() == net->transformer->h[1].get());
}

BOOST_AUTO_TEST_CASE(gpt2_gradients_with_checkpointing_equal_those_without) {
  torch::manual_seed(11);
  model::Gpt2 net(tiny_gpt2());
  check_checkpointing<model::Gpt2>(
      net, [](model::Gpt2& m, const torch::Tensor& ids) { return next_token_loss(m->forward(ids), ids); }, 51, 3);
}

BOOST_AUTO_TEST_CASE(gpt2_recomputation_runs_under_the_forward_autocast) {
  torch::manual_seed(12);
  model::Gpt2 net(tiny_gpt2());
  check_checkpointing<model::Gpt2>(
      net, [](model::Gpt2& m, const torch::Tensor& ids) { return next_token_loss(m->forward(ids), ids); }, 51, 3,
      at::kBFloat16);
}

BOOST_AUTO_TEST_CASE(llama_gradients_with_checkpointing_equal_those_without) {
  torch::manual_seed(13);
  model::Llama net(tiny_llama());
  BOOST_TEST(net->blocks().size() == 3u);
  check_checkpointing<model::Llama>(
      net, [](model::Llama& m, const torch::Tensor& ids) { return next_token_loss(m->forward(ids), ids); }, 51, 3);
}

BOOST_AUTO_TEST_CASE(bert_gradients_with_checkpointing_equal_those_without) {
  torch::manual_seed(14);
  model::Bert net(tiny_bert());
  BOOST_TEST(net->blocks().size() == 3u);
  check_checkpointing<model::Bert>(
      net,
      [](model::Bert& m, const torch::Tensor& ids) {
        const model::BertOutput out = m->forward(ids);
        // A fixed, position-dependent readout so every output element matters.
        const torch::Tensor weights = torch::arange(out.last_hidden_state.numel(), torch::kFloat)
                                          .view(out.last_hidden_state.sizes())
                                          .remainder(7.0) - 3.0;
        return (out.last_hidden_state * weights).mean() + out.pooler_output.pow(2).mean();
      },
      51, 3);
}

// T5's blocks read more than their input: the position bias, made from the first
// block's parameter, and in the decoder the encoder's output. Their gradients, from
// every block, must reach the bias parameter and the encoder as without checkpointing.
BOOST_AUTO_TEST_CASE(t5_gradients_with_checkpointing_equal_those_without) {
  for (const std::string variant : {"relu tied", "gated untied"}) {
    BOOST_TEST_CONTEXT(variant) {
      torch::manual_seed(15);
      model::T5 net(tiny_t5(variant == "gated untied"));
      torch::manual_seed(7);
      const torch::Tensor source = torch::randint(2, 51, {2, 11}), labels = torch::randint(2, 51, {2, 9});
      torch::Tensor mask = torch::ones_like(source);
      mask[1].slice(0, 7).zero_();
      const auto step = [&](model::BlockRunner runner) {
        net->train();
        net->zero_grad();
        // Numbered over both stacks, as the trainer numbers them.
        net->encoder->set_block_runner(runner);
        net->decoder->set_block_runner([runner](std::size_t i, const at::Tensor& x, const model::BlockForward& block) {
          return runner ? runner(i + 2, x, block) : block(x);
        });
        torch::manual_seed(1234);
        const torch::Tensor logits = net->forward(source, mask, net->shift_right(labels));
        const torch::Tensor loss = F::cross_entropy(logits.reshape({-1, 51}), labels.reshape({-1}));
        loss.backward();
        Step out;
        out.losses.push_back(loss.item<double>());
        for (const auto& item : net->named_parameters())
          out.grads.emplace_back(item.key(), item.value().grad().defined() ? item.value().grad().clone() : torch::Tensor());
        net->encoder->set_block_runner({});
        net->decoder->set_block_runner({});
        return out;
      };
      const Step plain = step({});
      int checkpointed = 0;
      const Step recomputed = step(counting_checkpoint(checkpointed));
      BOOST_TEST(checkpointed == 5);
      check_same(recomputed, plain, 1e-6);
      // The bias parameters and the encoder got their gradients from the blocks.
      for (const auto& [name, grad] : recomputed.grads)
        if (name.find("relative_attention_bias") != std::string::npos || name.rfind("encoder.block.0", 0) == 0)
          BOOST_TEST((grad.defined() && grad.abs().sum().item<double>() > 0), name);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()  // test_activation_checkpoint
