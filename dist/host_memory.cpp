#include "dist/host_memory.h"

#include <ATen/ATen.h>
#include <c10/core/Storage.h>
#include <sys/mman.h>

#include <cstring>
#include <new>

namespace ftrain::dist {
namespace {

struct Mapping {
  void* memory;
  std::size_t bytes;
};

void unmap(void* context) {
  auto* mapping = static_cast<Mapping*>(context);
  munmap(mapping->memory, mapping->bytes);
  delete mapping;
}

class MappedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) override { return mapped_allocate(bytes); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

}  // namespace

c10::DataPtr mapped_allocate(std::size_t bytes) {
  if (bytes == 0) return c10::DataPtr(nullptr, c10::Device(c10::kCPU));
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  return c10::DataPtr(memory, new Mapping{memory, bytes}, &unmap, c10::Device(c10::kCPU));
}

at::Tensor mapped_zeros(c10::IntArrayRef shape, c10::ScalarType dtype) {
  static MappedAllocator allocator;
  int64_t numel = 1;
  for (int64_t extent : shape) numel *= extent;
  const auto bytes = static_cast<std::size_t>(numel) * c10::elementSize(dtype);
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, allocator.allocate(bytes), &allocator,
                       /*resizable=*/false);
  // Fresh anonymous pages read as zero: nothing to write.
  return at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, shape);
}

}  // namespace ftrain::dist
