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
// partial sums take kSumGroups * nnz * C elements, not one per chunk. Where its weights
// outgrow L1, AllegroBilinear takes a few rows at a time (each entry's weights loaded once
// per block); AllegroTrilinearSum takes a few entries at a time. Neither changes the order
// of any sum (benchmarks/NOTES.md, section 17).
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

// AllegroBilinear's entries grouped by output component, with the operands' offsets within
// a row (in elements) computed once per call rather than once per row and entry.
struct Plan {
  std::vector<int64_t> oa, ob;  // entry n reads a's component i_n at oa[n], b's j_n at ob[n]
  std::vector<int64_t> start;   // group g holds entries start[g] .. start[g + 1] - 1
  std::vector<int64_t> oo;      // and writes the output component at oo[g]
};

Plan MakePlan(Entries en, int64_t c) {
  Plan p;
  p.oa.resize(en.nnz);
  p.ob.resize(en.nnz);
  for (int64_t n = 0; n < en.nnz; ++n) {
    p.oa[n] = en.i[n] * c;
    p.ob[n] = en.j[n] * c;
    if (n == 0 || en.k[n] != en.k[n - 1]) {
      p.start.push_back(n);
      p.oo.push_back(en.k[n] * c);
    }
  }
  p.start.push_back(en.nnz);
  return p;
}

// Rows e0..e1 of AllegroBilinear with per-channel weights, for a channel count CC known at
// compile time, R rows at a time: each entry's weights are loaded once for R rows (at high
// l_max the weights, nnz x C, outgrow L1 while the rows' operands stay in it) and the R x CC
// sums stay in registers; rows left over go to BilinearRows. Every row sums its entries in
// the same order and with the same expressions as BilinearRows: the same bits.
template <typename T, int CC, int R>
void BilinearBlocked(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w,
                     T* __restrict__ out, int64_t e0, int64_t e1, int64_t sa, int64_t sb,
                     int64_t so, const Plan& plan, Entries en) {
  const int64_t* __restrict__ oa = plan.oa.data();
  const int64_t* __restrict__ ob = plan.ob.data();
  const int64_t* __restrict__ start = plan.start.data();
  const int64_t* __restrict__ oo = plan.oo.data();
  const int64_t groups = static_cast<int64_t>(plan.oo.size());
  int64_t e = e0;
  for (; e + R <= e1; e += R) {
    const T* __restrict__ ae = a + e * sa;
    const T* __restrict__ be = b + e * sb;
    T* __restrict__ oe = out + e * so;
    std::memset(oe, 0, sizeof(T) * R * so);
    for (int64_t g = 0; g < groups; ++g) {
      alignas(64) T acc[R][CC];
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < CC; ++u) acc[r][u] = T(0);
      for (int64_t n = start[g]; n < start[g + 1]; ++n) {
        const T* __restrict__ x = ae + oa[n];
        const T* __restrict__ y = be + ob[n];
        const T* __restrict__ wn = w + n * CC;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          for (int u = 0; u < CC; ++u) acc[r][u] += wn[u] * x[r * sa + u] * y[r * sb + u];
      }
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < CC; ++u) oe[r * so + oo[g] + u] = acc[r][u];
    }
  }
  if (e < e1) BilinearRows<T, CC>(a, b, w, out, e, e1, sa / CC, sb / CC, so / CC, CC, false, en);
}

template <typename T>
using BlockedFn = void (*)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t,
                           int64_t, const Plan&, Entries);

// Rows in blocks (BilinearBlocked) where the per-channel weights outgrow L1 (high l_max);
// otherwise nullptr, and BilinearRows takes one row at a time: with few entries the rows
// stream from memory and blocks of 4 took twice as long (an l_max 4 model's second product,
// 25 entries).
constexpr int64_t kBlockedWeightBytes = 32 * 1024;
constexpr int kBlockRows = 4;

template <typename T, int CC>
BlockedFn<T> BlockedForC() {
  constexpr int R = CC >= 64 ? 2 : kBlockRows;  // R x CC sums in registers: <= 128
  return BilinearBlocked<T, CC, R>;
}

template <typename T>
BlockedFn<T> PickBlocked(int64_t c, int64_t nnz, bool scalar_w) {
  if (scalar_w || nnz * c * static_cast<int64_t>(sizeof(T)) <= kBlockedWeightBytes) {
    return nullptr;
  }
  switch (c) {
    case 8: return BlockedForC<T, 8>();
    case 16: return BlockedForC<T, 16>();
    case 32: return BlockedForC<T, 32>();
    case 64: return BlockedForC<T, 64>();
    default: return nullptr;
  }
}

template <typename T>
using BilinearFn = void (*)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, bool, Entries);

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

// TrilinearRows for a channel count CC known at compile time, Q entries at a time: their
// Q x CC sums stay in registers while the chunk's rows pass once for all of them, and
// consecutive entries (sorted by the forward product's output, then its first operand)
// mostly read the same operand components, which then come from L1 rather than L2. Each
// entry sums the rows in the same order, with the same expressions, as TrilinearRows: the
// same bits. Entries left over go to TrilinearRows.
template <typename T, int CC, int Q>
void TrilinearBlocked(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z,
                      T* __restrict__ part, int64_t e0, int64_t e1, int64_t dx, int64_t dy,
                      int64_t dz, int64_t /*c_rt*/, Entries en) {
  const int64_t sx = dx * CC, sy = dy * CC, sz = dz * CC;
  int64_t n0 = 0;
  for (; n0 + Q <= en.nnz; n0 += Q) {
    alignas(64) T acc[Q][CC];
    int64_t ox[Q], oy[Q], oz[Q];
    for (int q = 0; q < Q; ++q) {
      ox[q] = en.i[n0 + q] * CC + e0 * sx;
      oy[q] = en.j[n0 + q] * CC + e0 * sy;
      oz[q] = en.k[n0 + q] * CC + e0 * sz;
      for (int u = 0; u < CC; ++u) acc[q][u] = T(0);
    }
    for (int64_t e = 0; e < e1 - e0; ++e) {
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) {
        const T* __restrict__ p = x + ox[q] + e * sx;
        const T* __restrict__ r = y + oy[q] + e * sy;
        const T* __restrict__ t = z + oz[q] + e * sz;
        for (int u = 0; u < CC; ++u) acc[q][u] += p[u] * r[u] * t[u];
      }
    }
    for (int q = 0; q < Q; ++q)
      for (int u = 0; u < CC; ++u) part[(n0 + q) * CC + u] += acc[q][u];
  }
  if (n0 < en.nnz) {
    const Entries rest{en.i + n0, en.j + n0, en.k + n0, en.nnz - n0};
    TrilinearRows<T, CC>(x, y, z, part + n0 * CC, e0, e1, dx, dy, dz, CC, rest);
  }
}

template <typename T>
using TrilinearFn = void (*)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, Entries);

template <typename T>
TrilinearFn<T> PickTrilinear(int64_t c) {
  switch (c) {
    case 8: return TrilinearBlocked<T, 8, 4>;
    case 16: return TrilinearBlocked<T, 16, 4>;
    case 32: return TrilinearBlocked<T, 32, 4>;
    case 64: return TrilinearBlocked<T, 64, 2>;
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
  const BlockedFn<T> blocked = PickBlocked<T>(c, en.nnz, scalar_w);
  const BilinearFn<T> kernel = PickBilinear<T>(c);
  int64_t chunk = ChunkRows((da + db + dout) * c);
  // whole blocks of rows per chunk (rows are independent: any split gives the same bits)
  if (blocked) chunk = (chunk + kBlockRows - 1) / kBlockRows * kBlockRows;
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  const Plan plan = blocked ? MakePlan(en, c) : Plan{};
  auto fn = [&](int64_t ch) {
    const int64_t e0 = ch * chunk, e1 = std::min(rows, e0 + chunk);
    if (blocked) {
      blocked(ap, bp, wp, op, e0, e1, da * c, db * c, dout * c, plan, en);
    } else {
      kernel(ap, bp, wp, op, e0, e1, da, db, dout, c, scalar_w, en);
    }
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
