// Host memory for large buffers that live for a moment: gathered parameters and full
// gradients of one unit, the pieces a checkpoint is read through. Mapped from the
// kernel and unmapped when the last tensor using it goes, so freed memory leaves the
// process at once.
//
// These are mapped whatever the process's malloc settings. Everything else smaller than
// 32 MiB comes from the heap, where ftrain keeps freed memory for the next step, unless
// run.host_memory = release maps it from 128 KiB (launch/main.cpp). Buffers of a
// block's size kept in a heap among activations of other sizes fragment it: measured on a
// 26M-parameter GPT-2 at ZeRO-3 on 4 ranks, the resident peak of a step grew by about
// one fp32 model that way, and reading a checkpoint by about as much. The price of
// mapping is a page fault per 4 KiB written, small beside what is done with a block or
// a piece.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstddef>

namespace ftrain::dist {

// `bytes` of mapped memory, uninitialised (the kernel gives zeroed pages).
c10::DataPtr mapped_allocate(std::size_t bytes);

// A contiguous CPU tensor in mapped memory, zeroed.
at::Tensor mapped_zeros(c10::IntArrayRef shape, c10::ScalarType dtype);

}  // namespace ftrain::dist
