// CPU kernels of Allegro's sparse channel-wise tensor product, as XLA FFI custom calls.
//
// Tensor features are [n_rows, D, C] arrays (row = edge, D irrep components, C channels
// minor), so one row's operands are contiguous and stay in L1 while all of its non-zero
// Clebsch-Gordan entries are applied. Two primitives (see tensor_product.py):
//
//   AllegroBilinear:     out[e, io_n, :] = sum_{n: io_n} w[n, :] * a[e, ia_n, :] * b[e, ib_n, :]
//                        (entries sorted by io; w is [nnz, C], or [nnz, 1] broadcast over C)
//   AllegroTrilinearSum: s[n, :] = sum_e x[e, ix_n, :] * y[e, iy_n, :] * z[e, iz_n, :]
//
// Rows are split into chunks whose size depends only on the shapes, run on XLA's intra-op
// thread pool. AllegroTrilinearSum sums the chunks in at most kSumGroups fixed groups of
// consecutive chunks (each group's partial sum in chunk order, then the groups in order),
// so every result is independent of the number of threads (runs are reproducible) and the
// partial sums take kSumGroups * nnz * C elements, not one per chunk.
// Built on first use by allegro_jax/nn/cpu_kernel.py against the installed jaxlib's FFI
// headers.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs fn(0), ..., fn(n_chunks - 1) on the calling thread and on up to num_threads - 1
// tasks of the pool. Chunks are claimed from an atomic counter, and the caller only waits
// for chunks that some thread has already claimed, so it never waits on a task that has
// not started (no deadlock when every pool thread is busy). A task that starts after all
// chunks are claimed touches only the shared counter.
template <typename F>
void ParallelChunks(ffi::ThreadPool& pool, int64_t n_chunks, F& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const int64_t tasks = std::min<int64_t>(pool.num_threads(), n_chunks) - 1;
  F* body = &fn;
  auto work = [state, n_chunks, body]() {
    int64_t c;
    while ((c = state->next.fetch_add(1)) < n_chunks) {
      (*body)(c);
      if (state->done.fetch_add(1) + 1 == n_chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 0; t < tasks; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() >= n_chunks; });
}

struct Entries {
  const int32_t* i;
  const int32_t* j;
  const int32_t* k;
  int64_t nnz;
};

// Rows e0..e1 of AllegroBilinear. CC is the channel count when known at compile time
// (fully unrolled, vectorised loops), else 0 and c_rt is used.
template <typename T, int CC>
void BilinearRows(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w,
                  T* __restrict__ out, int64_t e0, int64_t e1, int64_t da, int64_t db,
                  int64_t dout, int64_t c_rt, bool scalar_w, Entries en) {
  const int64_t c = CC > 0 ? CC : c_rt;
  std::vector<T> heap(CC > 0 ? 0 : c);
  alignas(64) T stack_acc[CC > 0 ? CC : 1];
  T* __restrict__ acc = CC > 0 ? stack_acc : heap.data();
  for (int64_t e = e0; e < e1; ++e) {
    const T* __restrict__ ae = a + e * da * c;
    const T* __restrict__ be = b + e * db * c;
    T* __restrict__ oe = out + e * dout * c;
    std::memset(oe, 0, sizeof(T) * dout * c);
    int64_t n = 0;
    while (n < en.nnz) {  // one group of entries per output component
      const int32_t k = en.k[n];
      for (int64_t u = 0; u < c; ++u) acc[u] = T(0);
      for (; n < en.nnz && en.k[n] == k; ++n) {
        const T* __restrict__ x = ae + en.i[n] * c;
        const T* __restrict__ y = be + en.j[n] * c;
        if (scalar_w) {
          const T s = w[n];
          for (int64_t u = 0; u < c; ++u) acc[u] += s * x[u] * y[u];
        } else {
          const T* __restrict__ wn = w + n * c;
          for (int64_t u = 0; u < c; ++u) acc[u] += wn[u] * x[u] * y[u];
        }
      }
      T* __restrict__ o = oe + k * c;
      for (int64_t u = 0; u < c; ++u) o[u] = acc[u];
    }
  }
}

// part[n, :] += sum over rows e0..e1 of AllegroTrilinearSum's products (one chunk).
template <typename T, int CC>
void TrilinearRows(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z,
                   T* __restrict__ part, int64_t e0, int64_t e1, int64_t dx, int64_t dy,
                   int64_t dz, int64_t c_rt, Entries en) {
  const int64_t c = CC > 0 ? CC : c_rt;
  std::vector<T> heap(CC > 0 ? 0 : c);
  alignas(64) T stack_acc[CC > 0 ? CC : 1];
  T* __restrict__ acc = CC > 0 ? stack_acc : heap.data();
  for (int64_t n = 0; n < en.nnz; ++n) {
    for (int64_t u = 0; u < c; ++u) acc[u] = T(0);
    const T* __restrict__ xn = x + en.i[n] * c;
    const T* __restrict__ yn = y + en.j[n] * c;
    const T* __restrict__ zn = z + en.k[n] * c;
    for (int64_t e = e0; e < e1; ++e) {
      const T* __restrict__ p = xn + e * dx * c;
      const T* __restrict__ q = yn + e * dy * c;
      const T* __restrict__ r = zn + e * dz * c;
      for (int64_t u = 0; u < c; ++u) acc[u] += p[u] * q[u] * r[u];
    }
    for (int64_t u = 0; u < c; ++u) part[n * c + u] += acc[u];
  }
}

template <typename T>
using BilinearFn = void (*)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, bool, Entries);
template <typename T>
using TrilinearFn = void (*)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, Entries);

template <typename T>
BilinearFn<T> PickBilinear(int64_t c) {
  switch (c) {
    case 8: return BilinearRows<T, 8>;
    case 16: return BilinearRows<T, 16>;
    case 32: return BilinearRows<T, 32>;
    case 64: return BilinearRows<T, 64>;
    case 128: return BilinearRows<T, 128>;
    default: return BilinearRows<T, 0>;
  }
}

template <typename T>
TrilinearFn<T> PickTrilinear(int64_t c) {
  switch (c) {
    case 8: return TrilinearRows<T, 8>;
    case 16: return TrilinearRows<T, 16>;
    case 32: return TrilinearRows<T, 32>;
    case 64: return TrilinearRows<T, 64>;
    case 128: return TrilinearRows<T, 128>;
    default: return TrilinearRows<T, 0>;
  }
}

// Groups of chunks with one partial sum each in AllegroTrilinearSum (a constant: a number
// of threads must not change the sums; enough groups to keep a many-core pool busy).
constexpr int64_t kSumGroups = 32;

// Rows per chunk: about 32k operand elements (128 KB in float32) per chunk.
int64_t ChunkRows(int64_t elements_per_row) {
  return std::max<int64_t>(4, (32 * 1024) / std::max<int64_t>(1, elements_per_row));
}

ffi::Error CheckOperands(const char* name, std::initializer_list<const ffi::AnyBuffer*> xs,
                         ffi::DataType dtype, int64_t rows, int64_t c) {
  for (const ffi::AnyBuffer* x : xs) {
    auto d = x->dimensions();
    if (x->element_type() != dtype || d.size() != 3 || d[0] != rows || d[2] != c) {
      return ffi::Error::InvalidArgument(std::string(name) +
                                         ": operands must be [rows, D, C] of one dtype");
    }
  }
  return ffi::Error::Success();
}

template <typename T>
ffi::Error BilinearImpl(ffi::ThreadPool& pool, const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                        const ffi::AnyBuffer& w, ffi::AnyBuffer& out, Entries en) {
  auto ad = a.dimensions();
  const int64_t rows = ad[0], da = ad[1], c = ad[2];
  const int64_t db = b.dimensions()[1], dout = out.dimensions()[1];
  const bool scalar_w = w.dimensions()[1] == 1 && c != 1;
  const T* ap = a.typed_data<T>();
  const T* bp = b.typed_data<T>();
  const T* wp = w.typed_data<T>();
  T* op = out.typed_data<T>();
  const int64_t chunk = ChunkRows((da + db + dout) * c);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  const BilinearFn<T> kernel = PickBilinear<T>(c);
  auto fn = [&](int64_t ch) {
    const int64_t e0 = ch * chunk, e1 = std::min(rows, e0 + chunk);
    kernel(ap, bp, wp, op, e0, e1, da, db, dout, c, scalar_w, en);
  };
  if (rows > 0) ParallelChunks(pool, n_chunks, fn);
  return ffi::Error::Success();
}

template <typename T>
ffi::Error TrilinearImpl(ffi::ThreadPool& pool, const ffi::AnyBuffer& x,
                         const ffi::AnyBuffer& y, const ffi::AnyBuffer& z, ffi::AnyBuffer& out,
                         Entries en) {
  auto xd = x.dimensions();
  const int64_t rows = xd[0], dx = xd[1], c = xd[2];
  const int64_t dy = y.dimensions()[1], dz = z.dimensions()[1];
  const T* xp = x.typed_data<T>();
  const T* yp = y.typed_data<T>();
  const T* zp = z.typed_data<T>();
  T* op = out.typed_data<T>();
  const int64_t chunk = ChunkRows((dx + dy + dz) * c);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  const int64_t size = en.nnz * c;
  // One partial sum per group of consecutive chunks, not per chunk: one per chunk took
  // n_chunks * nnz * C elements (110 MB for an l_max 4 training batch), which glibc
  // served with mmap and the kernel zeroed at every call (benchmarks/NOTES.md, 16).
  const int64_t groups = std::min(n_chunks, kSumGroups);
  std::vector<T> partial(groups * size);
  const TrilinearFn<T> kernel = PickTrilinear<T>(c);
  auto fn = [&](int64_t g) {
    T* part = partial.data() + g * size;
    for (int64_t ch = g * n_chunks / groups; ch < (g + 1) * n_chunks / groups; ++ch) {
      const int64_t e0 = ch * chunk, e1 = std::min(rows, e0 + chunk);
      kernel(xp, yp, zp, part, e0, e1, dx, dy, dz, c, en);
    }
  };
  if (rows > 0) ParallelChunks(pool, groups, fn);
  std::fill(op, op + size, T(0));
  for (int64_t g = 0; g < groups; ++g) {  // fixed order: reproducible sums
    const T* p = partial.data() + g * size;
    for (int64_t q = 0; q < size; ++q) op[q] += p[q];
  }
  return ffi::Error::Success();
}

ffi::Error Bilinear(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer w,
                    ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int32_t> ia,
                    ffi::Span<const int32_t> ib, ffi::Span<const int32_t> io) {
  const auto ad = a.dimensions();
  if (ad.size() != 3) return ffi::Error::InvalidArgument("allegro bilinear: a must be rank 3");
  if (auto err = CheckOperands("allegro bilinear", {&b, &*out}, a.element_type(), ad[0], ad[2]);
      err.failure()) {
    return err;
  }
  const auto wd = w.dimensions();
  if (wd.size() != 2 || wd[0] != static_cast<int64_t>(ia.size()) ||
      (wd[1] != 1 && wd[1] != ad[2]) || ib.size() != ia.size() || io.size() != ia.size()) {
    return ffi::Error::InvalidArgument("allegro bilinear: w must be [nnz, C] or [nnz, 1]");
  }
  Entries en{ia.begin(), ib.begin(), io.begin(), static_cast<int64_t>(ia.size())};
  switch (a.element_type()) {
    case ffi::DataType::F32: return BilinearImpl<float>(pool, a, b, w, *out, en);
    case ffi::DataType::F64: return BilinearImpl<double>(pool, a, b, w, *out, en);
    default: return ffi::Error::InvalidArgument("allegro bilinear: float32 or float64 only");
  }
}

ffi::Error Trilinear(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer z,
                     ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int32_t> ix,
                     ffi::Span<const int32_t> iy, ffi::Span<const int32_t> iz) {
  const auto xd = x.dimensions();
  if (xd.size() != 3) {
    return ffi::Error::InvalidArgument("allegro trilinear_sum: x must be rank 3");
  }
  if (auto err = CheckOperands("allegro trilinear_sum", {&y, &z}, x.element_type(), xd[0], xd[2]);
      err.failure()) {
    return err;
  }
  if (iy.size() != ix.size() || iz.size() != ix.size()) {
    return ffi::Error::InvalidArgument("allegro trilinear_sum: index lists differ in length");
  }
  Entries en{ix.begin(), iy.begin(), iz.begin(), static_cast<int64_t>(ix.size())};
  switch (x.element_type()) {
    case ffi::DataType::F32: return TrilinearImpl<float>(pool, x, y, z, *out, en);
    case ffi::DataType::F64: return TrilinearImpl<double>(pool, x, y, z, *out, en);
    default: return ffi::Error::InvalidArgument("allegro trilinear_sum: float32 or float64 only");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AllegroBilinear, Bilinear,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int32_t>>("ia")
                                  .Attr<ffi::Span<const int32_t>>("ib")
                                  .Attr<ffi::Span<const int32_t>>("io"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AllegroTrilinearSum, Trilinear,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int32_t>>("ix")
                                  .Attr<ffi::Span<const int32_t>>("iy")
                                  .Attr<ffi::Span<const int32_t>>("iz"));
