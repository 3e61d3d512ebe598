// Rows that hold several documents (packing with document masking). A (B, T) tensor of
// document ids says which document each position belongs to: 0 is padding, and the
// positions of one positive id form one document. An attention mask of 0s and 1s is
// the case of one document per row. Each document is read as if it were alone in its
// row: its positions count from 0, and its tokens attend causally to its own tokens only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace ftrain::model {

// (B, T) int64: each real token's position within its document (0 at the document's
// first token); padding keeps the running count of real tokens before it, less one (0 at
// least), as for a plain padding mask.
at::Tensor positions_within_documents(const at::Tensor& documents);

// bool (B, 1, T, T): query q may read key k when k is not after it, both belong to the
// same document, and (with a window) k lies within the window. A padding query reads
// the real tokens before it and itself, so no row of the softmax is empty.
at::Tensor document_attention_mask(const at::Tensor& documents, std::optional<int64_t> window = std::nullopt);

// The document ids of an attention mask, int64 on input_ids' device: integers as they
// are, a bool or floating mask as 1 where it is non-zero. Throws std::runtime_error
// naming `who` unless it has the shape of input_ids. Its values are the data's to check
// (no device sync here): a negative id reads as padding.
at::Tensor document_ids(const at::Tensor& attention_mask, const at::Tensor& input_ids, const char* who);

}  // namespace ftrain::model
