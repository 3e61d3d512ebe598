#include "model/documents.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace ftrain::model {

at::Tensor positions_within_documents(const at::Tensor& documents) {
  const at::Tensor is_token = documents.gt(0);
  const at::Tensor count = is_token.to(at::kLong).cumsum(/*dim=*/1);  // real tokens up to and including t
  // A document starts where a real token's id differs from the position before it.
  at::Tensor starts = is_token.clone();
  if (documents.size(1) > 1)
    starts.narrow(1, 1, documents.size(1) - 1)
        .logical_and_(documents.narrow(1, 1, documents.size(1) - 1).ne(documents.narrow(1, 0, documents.size(1) - 1)));
  // Real tokens before the current document's start, carried forward from each start.
  const at::Tensor before = std::get<0>(at::where(starts, count - 1, at::zeros_like(count)).cummax(/*dim=*/1));
  return at::where(is_token, count - 1 - before, (count - 1).clamp_min(0));
}

at::Tensor document_attention_mask(const at::Tensor& documents, std::optional<int64_t> window) {
  const int64_t B = documents.size(0), T = documents.size(1);
  const at::Tensor index = at::arange(T, documents.options().dtype(at::kLong));
  const at::Tensor key = index.view({1, 1, 1, T}), query = index.view({1, 1, T, 1});
  at::Tensor allowed = key.le(query);
  if (window) allowed = allowed.logical_and(key.gt(query - *window));
  const at::Tensor key_doc = documents.view({B, 1, 1, T}), query_doc = documents.view({B, 1, T, 1});
  // A real key of the query's own document, or any real key for a padding query.
  const at::Tensor readable = key_doc.gt(0).logical_and(key_doc.eq(query_doc).logical_or(query_doc.eq(0)));
  return allowed.logical_and(readable.logical_or(key.eq(query)));
}

at::Tensor document_ids(const at::Tensor& attention_mask, const at::Tensor& input_ids, const char* who) {
  if (attention_mask.sizes() != input_ids.sizes())
    throw std::runtime_error(std::string(who) + ": attention_mask must have the shape of input_ids " +
                             c10::str(input_ids.sizes()) + ", got " + c10::str(attention_mask.sizes()));
  const at::Tensor mask = attention_mask.to(input_ids.device());
  if (at::isIntegralType(mask.scalar_type(), /*includeBool=*/false)) return mask.to(at::kLong);
  return mask.ne(0).to(at::kLong);  // bool or floating: a padding mask, one document per row
}

}  // namespace ftrain::model
