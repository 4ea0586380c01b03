// voxtral::ring_attention.out: attention of a call's query rows over a ring KV cache, each cache byte read once.
//
// Streaming programs attend 1..64 query positions over ring caches of up to a few thousand slots, and a live step
// is bound by reading those caches. ExecuTorch's llama.custom_sdpa runs a BLAS gemm per query head and 512-slot
// block, which packs each K and V block before using it. This kernel reads every KV head's slots once for all the
// query rows that use them (the query heads of its GQA group at every position of the call), with an online
// softmax, so what it moves is the cache itself.
//
// Contract (docs/pte.md, "Custom operator"): q [1, S, H, D], k_cache and v_cache [1, N, Hkv, D], mask [S, N]
// additive (0 visible, -inf hidden), all contiguous; q, mask and out float32, the caches float32 or bfloat16 (both
// the same; bfloat16 is widened exactly to float32, so the math is the float32 math on the stored values); H a
// multiple of Hkv (query head h reads KV head h / (H / Hkv)); D a multiple of 8, at most 256; scale 1/sqrt(D).
// out [1, S, H, D]. A row that sees no slot gets zeros (the programs never ask for one: a query always sees its own
// key).
//
// Vectors are as wide as the CPU's (16 floats with AVX-512, else 8; an 8-float tail covers D = 16k + 8), written
// with GCC/Clang vector extensions so the compiler picks the instructions for the machine it builds on.
//
// Work split: each work item takes a contiguous range of slots and the items' partial softmaxes are merged (a thread
// then streams through memory in order; reading one KV head's slots, a KV stride apart, touches a new page per
// slot). A live step has few rows, and an item takes all of them; many rows (a prefill, queued steps) make the work
// arithmetic: then an item takes one KV head's tile of rows. The slot ranges never depend on the row count.

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace voxtral {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

// A bfloat16 cache element: the top half of a float32.
typedef uint16_t bf16;

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector
typedef f32x16 vec;
typedef i32x16 ivec;
#else
constexpr int kLanes = 8;
typedef f32x8 vec;
typedef i32x8 ivec;
#endif

constexpr int kBlockSlots = 32;     // slots per online-softmax block (its keys and values stay in L2 between passes)
constexpr int kMaxItemRows = 256;   // rows one work item carries (scores: kMaxItemRows x kBlockSlots floats)
constexpr int kTileRows = 16;       // rows per item when the rows are split by KV head
constexpr int kMaxRanges = 16;      // slot ranges per call at most (each holds a partial result of every row)
constexpr int kMaxHeadDim = 256;
constexpr int kValueSlots = 4;      // slots per pass of the values loop
constexpr int kLineBytes = 64;      // the prefetch stride
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Unaligned loads and stores (cache rows are only element-aligned).
typedef float f32x8_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
typedef float f32x16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
typedef uint16_t u16x8_unaligned __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint16_t u16x16_unaligned __attribute__((vector_size(32), aligned(2), may_alias));

inline f32x8 load8(const float* p) { return *reinterpret_cast<const f32x8_unaligned*>(p); }
inline f32x8 load8(const bf16* p) {
  return (f32x8)(__builtin_convertvector(*reinterpret_cast<const u16x8_unaligned*>(p), u32x8) << 16);
}
inline void store8(float* p, f32x8 v) { *reinterpret_cast<f32x8_unaligned*>(p) = v; }

#if defined(__AVX512F__)
inline vec load(const float* p) { return *reinterpret_cast<const f32x16_unaligned*>(p); }
inline vec load(const bf16* p) {
  return (f32x16)(__builtin_convertvector(*reinterpret_cast<const u16x16_unaligned*>(p), u32x16) << 16);
}
inline void store(float* p, vec v) { *reinterpret_cast<f32x16_unaligned*>(p) = v; }
// The two halves added: 8 lanes.
inline f32x8 fold8(f32x16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}
#else
inline vec load(const float* p) { return load8(p); }
inline vec load(const bf16* p) { return load8(p); }
inline void store(float* p, vec v) { store8(p, v); }
inline f32x8 fold8(f32x8 v) { return v; }
#endif

inline vec splat(float x) { return vec{} + x; }
inline f32x8 splat8(float x) { return f32x8{} + x; }

inline float sum8(f32x8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
// The lanes in the order sum8x8 adds each vector's: a score has the same bits from score_one as from score_rows.
inline float sum8_pairs(f32x8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

inline float max_lanes(vec v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}

// exp(x) for the softmax's shifted scores (x <= 0), Cephes' single-precision polynomial: relative error about 2e-7;
// exactly 0 below -87 and for -inf (hidden slots).
inline vec exp_lanes(vec x) {
  const vec visible = x < splat(-87.0f) ? splat(0.0f) : splat(1.0f);
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vec fx = x * splat(1.44269504088896341f) + splat(0.5f);
  vec n = __builtin_convertvector(__builtin_convertvector(fx, ivec), vec);
  n = n > fx ? n - splat(1.0f) : n;  // floor: the conversion truncates towards zero
  x = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vec y = splat(1.9875691500e-4f);
  y = y * x + splat(1.3981999507e-3f);
  y = y * x + splat(8.3334519073e-3f);
  y = y * x + splat(4.1665795894e-2f);
  y = y * x + splat(1.6666665459e-1f);
  y = y * x + splat(5.0000001201e-1f);
  y = y * x * x + x + splat(1.0f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  return y * (vec)bits * visible;
}

struct Shapes {
  int64_t seq, heads, kv_heads, head_dim, slots, rep;
};

// A query row: its vector, its mask row, the offset of its KV head within a slot.
struct Row {
  const float* q;
  const float* mask;
  int64_t kv;
};

// The eight lane sums of x[0..7], as one vector: a transposing add tree (21 operations instead of 8 horizontal sums).
inline f32x8 sum8x8(const f32x8* x) {
  f32x8 u[4], w[2];
  for (int k = 0; k < 4; ++k) {
    u[k] = __builtin_shufflevector(x[2 * k], x[2 * k + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(x[2 * k], x[2 * k + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int m = 0; m < 2; ++m) {
    w[m] = __builtin_shufflevector(u[2 * m], u[2 * m + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(u[2 * m], u[2 * m + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  return __builtin_shufflevector(w[0], w[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(w[0], w[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// Scores of R rows sharing one KV head (R = 1, 2 or 4) against 8 / R consecutive slots from t: 8 accumulators, one
// add tree. keys points at slot t's key of that head.
template <int R, typename T>
inline void score_rows(const Row* rows, const T* keys, int64_t kv_stride, int64_t D, float scale,
                       float (*p)[kBlockSlots], int t) {
  constexpr int N = 8 / R;
  vec a[8];
  for (int x = 0; x < 8; ++x) a[x] = splat(0.0f);
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    vec kk[N];
    for (int j = 0; j < N; ++j) kk[j] = load(keys + j * kv_stride + d);
    for (int r = 0; r < R; ++r) {
      const vec qq = load(rows[r].q + d);
      for (int j = 0; j < N; ++j) a[r * N + j] += qq * kk[j];
    }
  }
  f32x8 a8[8];
  for (int x = 0; x < 8; ++x) a8[x] = fold8(a[x]);
  if (d < D) {  // the 8-float tail of D = 16k + 8
    for (int r = 0; r < R; ++r) {
      const f32x8 qq = load8(rows[r].q + d);
      for (int j = 0; j < N; ++j) a8[r * N + j] += qq * load8(keys + j * kv_stride + d);
    }
  }
  const f32x8 sums = sum8x8(a8) * splat8(scale);
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < N; ++j) p[r][t + j] = sums[r * N + j];
  }
}

// One row against one slot (the tails).
template <typename T>
inline float score_one(const float* q, const T* key, int64_t D) {
  vec a = splat(0.0f);
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) a += load(q + d) * load(key + d);
  f32x8 a8 = fold8(a);
  if (d < D) a8 += load8(q + d) * load8(key + d);
  return sum8_pairs(a8);
}

// Scores of a group's `count` rows (1 to 4, sharing one KV head) against `slots` slots from t (a multiple of 8 when
// count is 1 or 3, of 8 / count otherwise).
template <typename T>
inline void score_group(const Row* rows, int count, const T* keys, int64_t kv_stride, int64_t D, float scale,
                        float (*p)[kBlockSlots], int t, int slots) {
  switch (count) {
    case 4:
      for (int j = 0; j < slots; j += 2) score_rows<4>(rows, keys + j * kv_stride, kv_stride, D, scale, p, t + j);
      break;
    case 2:
      for (int j = 0; j < slots; j += 4) score_rows<2>(rows, keys + j * kv_stride, kv_stride, D, scale, p, t + j);
      break;
    case 1:
      for (int j = 0; j < slots; j += 8) score_rows<1>(rows, keys + j * kv_stride, kv_stride, D, scale, p, t + j);
      break;
    default:
      for (int r = 0; r < count; ++r) {
        for (int j = 0; j < slots; ++j) p[r][t + j] = score_one(rows[r].q, keys + j * kv_stride, D) * scale;
      }
  }
}

// acc[r] += sum_t p[r][t0 + t] v[t] over NT slots, for R rows sharing one KV head: the NT x R weights and two
// vectors of each row's accumulator in registers. Few slots per pass keep their rows (a KV stride apart, so in one
// L1 set) cached.
template <int R, int NT, typename T>
inline void weigh_values(const T* values, int64_t kv_stride, int t0, int64_t D, const float (*p)[kBlockSlots],
                         float* const* acc) {
  vec w[NT][R];
  for (int t = 0; t < NT; ++t) {
    for (int r = 0; r < R; ++r) w[t][r] = splat(p[r][t0 + t]);
  }
  int64_t d = 0;
  for (; d + 2 * kLanes <= D; d += 2 * kLanes) {
    vec lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      lo[r] = load(acc[r] + d);
      hi[r] = load(acc[r] + d + kLanes);
    }
    for (int t = 0; t < NT; ++t) {
      const T* value = values + t * kv_stride + d;
      const vec v0 = load(value), v1 = load(value + kLanes);
      for (int r = 0; r < R; ++r) {
        lo[r] += w[t][r] * v0;
        hi[r] += w[t][r] * v1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store(acc[r] + d, lo[r]);
      store(acc[r] + d + kLanes, hi[r]);
    }
  }
  for (; d + kLanes <= D; d += kLanes) {
    vec sum[R];
    for (int r = 0; r < R; ++r) sum[r] = load(acc[r] + d);
    for (int t = 0; t < NT; ++t) {
      const vec v0 = load(values + t * kv_stride + d);
      for (int r = 0; r < R; ++r) sum[r] += w[t][r] * v0;
    }
    for (int r = 0; r < R; ++r) store(acc[r] + d, sum[r]);
  }
  if (d < D) {  // the 8-float tail of D = 16k + 8
    f32x8 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = load8(acc[r] + d);
    for (int t = 0; t < NT; ++t) {
      const f32x8 v0 = load8(values + t * kv_stride + d);
      for (int r = 0; r < R; ++r) sum[r] += splat8(p[r][t0 + t]) * v0;
    }
    for (int r = 0; r < R; ++r) store8(acc[r] + d, sum[r]);
  }
}

// weigh_values for `nt` (<= kValueSlots) slots: whole passes, then one slot at a time (a block's last slots).
template <int R, typename T>
inline void weigh_slots(const T* values, int64_t kv_stride, int t0, int nt, int64_t D, const float (*p)[kBlockSlots],
                        float* const* acc) {
  if (nt == kValueSlots) {
    weigh_values<R, kValueSlots>(values, kv_stride, t0, D, p, acc);
    return;
  }
  for (int t = 0; t < nt; ++t) weigh_values<R, 1>(values + t * kv_stride, kv_stride, t0 + t, D, p, acc);
}

// Attends rows[0..n) (sorted by KV head) over slots [slot0, slot1); leaves each row's partial softmax: weighted
// values in acc[i * D ...], running max and sum.
template <typename T>
void attend(const Shapes& s, const Row* rows, int n, const T* k, const T* v, int64_t slot0, int64_t slot1,
            float* acc, float* row_max, float* row_sum) {
  const int64_t D = s.head_dim, kv_stride = s.kv_heads * D;
  const int64_t line = kLineBytes / static_cast<int64_t>(sizeof(T));  // elements per cache line
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  alignas(64) float p[kMaxItemRows][kBlockSlots];
  bool live[kMaxItemRows];
  float* acc_row[kMaxItemRows];
  // Groups of up to four consecutive rows that read the same KV head.
  int group_start[kMaxItemRows + 1], n_groups = 0;
  for (int i = 0; i < n;) {
    int j = i + 1;
    while (j < n && j - i < 4 && rows[j].kv == rows[i].kv) ++j;
    group_start[n_groups++] = i;
    i = j;
  }
  group_start[n_groups] = n;
  // Slots per scoring pass: the slots one score_rows call covers (8 / group size) when all groups have one size.
  int step = 8;
  if (n_groups > 0) {
    const int count = group_start[1] - group_start[0];
    bool same = count != 3;
    for (int g = 1; g < n_groups && same; ++g) same = group_start[g + 1] - group_start[g] == count;
    if (same) step = 8 / count;
  }
  for (int i = 0; i < n; ++i) {
    acc_row[i] = acc + i * D;
    std::memset(acc_row[i], 0, sizeof(float) * D);
    row_max[i] = kMinusInf;
    row_sum[i] = 0.0f;
  }
  for (int64_t b = slot0; b < slot1; b += kBlockSlots) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlockSlots, slot1 - b));
    bool any_visible = false;
    const float* checked = nullptr;
    for (int i = 0; i < n && !any_visible; ++i) {
      if (rows[i].mask == checked) continue;
      checked = rows[i].mask;
      for (int t = 0; t < nb; ++t) {
        if (checked[b + t] != kMinusInf) {
          any_visible = true;
          break;
        }
      }
    }
    if (!any_visible) continue;  // an unfilled ring, or slots outside every row's window

    // Keys scored slot-major, `step` slots at a time for every group; meanwhile the next block's keys and values are
    // requested in the order this loop will read them. The hardware prefetchers cannot follow a KV head's slots (a
    // slot stride apart), and without this the kernel mostly waits on memory (docs/runtime.md, "Where the time goes").
    const bool next_block = b + 2 * kBlockSlots <= slot1;
    int t = 0;
    for (; t + step <= nb; t += step) {
      for (int g = 0; g < n_groups; ++g) {
        const int i = group_start[g];
        const int64_t at = (b + t) * kv_stride + rows[i].kv;  // this group's key (and value) of slot b + t
        if (next_block) {
          for (int j = 0; j < step; ++j) {
            const int64_t ahead = at + (kBlockSlots + j) * kv_stride;  // the same head, one block later
            for (int64_t off = 0; off < D; off += line) {
              __builtin_prefetch(k + ahead + off);
              __builtin_prefetch(v + ahead + off);
            }
          }
        }
        score_group(rows + i, group_start[g + 1] - i, k + at, kv_stride, D, scale, p + i, t, step);
      }
    }
    for (int i = 0; i < n; ++i) {
      for (int tt = t; tt < nb; ++tt) {
        p[i][tt] = score_one(rows[i].q, k + (b + tt) * kv_stride + rows[i].kv, D) * scale;
      }
    }

    // Online softmax: masks added, weights exp(score - running max), what was accumulated rescaled.
    for (int i = 0; i < n; ++i) {
      const float* m = rows[i].mask + b;
      float* pi = p[i];
      vec top = splat(kMinusInf);
      int t = 0;
      for (; t + kLanes <= nb; t += kLanes) {
        const vec x = load(pi + t) + load(m + t);
        store(pi + t, x);
        top = x > top ? x : top;
      }
      float block_max = max_lanes(top);
      for (; t < nb; ++t) {
        pi[t] += m[t];
        block_max = std::max(block_max, pi[t]);
      }
      live[i] = block_max != kMinusInf;
      if (!live[i]) {
        std::memset(pi, 0, sizeof(float) * nb);
        continue;
      }
      const float new_max = std::max(block_max, row_max[i]);
      const float correction = std::exp(row_max[i] - new_max);  // 0 on a row's first visible block
      row_max[i] = new_max;
      vec total = splat(0.0f);
      t = 0;
      for (; t + kLanes <= nb; t += kLanes) {
        const vec w = exp_lanes(load(pi + t) - splat(new_max));
        store(pi + t, w);
        total += w;
      }
      float tail = 0.0f;
      for (; t < nb; ++t) {
        pi[t] = pi[t] == kMinusInf ? 0.0f : std::exp(pi[t] - new_max);
        tail += pi[t];
      }
      row_sum[i] = row_sum[i] * correction + sum8(fold8(total)) + tail;
      if (correction != 1.0f) {
        int64_t d = 0;
        for (; d + kLanes <= D; d += kLanes) store(acc_row[i] + d, load(acc_row[i] + d) * splat(correction));
        if (d < D) store8(acc_row[i] + d, load8(acc_row[i] + d) * splat8(correction));
      }
    }

    for (int t0 = 0; t0 < nb; t0 += kValueSlots) {
      const int nt = std::min(kValueSlots, nb - t0);
      for (int g = 0; g < n_groups; ++g) {
        const int i = group_start[g], count = group_start[g + 1] - i;
        bool any = false;
        for (int r = i; r < i + count; ++r) any = any || live[r];
        if (!any) continue;
        const T* values = v + (b + t0) * kv_stride + rows[i].kv;
        switch (count) {
          case 4: weigh_slots<4>(values, kv_stride, t0, nt, D, p + i, acc_row + i); break;
          case 3: weigh_slots<3>(values, kv_stride, t0, nt, D, p + i, acc_row + i); break;
          case 2: weigh_slots<2>(values, kv_stride, t0, nt, D, p + i, acc_row + i); break;
          default: weigh_slots<1>(values, kv_stride, t0, nt, D, p + i, acc_row + i); break;
        }
      }
    }
  }
}

// out row = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c over the items c that saw the row.
// Rows [begin, end) of `rows`, so that calls can split the rows over the pool (a 16-step encoder call has 2048).
void merge(int64_t D, int n_items, int64_t rows, const float* acc, const float* row_max, const float* row_sum,
           float* const* out_row, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    float top = kMinusInf;
    for (int c = 0; c < n_items; ++c) top = std::max(top, row_max[c * rows + i]);
    float* o = out_row[i];
    std::memset(o, 0, sizeof(float) * D);
    if (top == kMinusInf) continue;
    float total = 0.0f;
    for (int c = 0; c < n_items; ++c) {
      if (row_max[c * rows + i] == kMinusInf) continue;
      const float w = std::exp(row_max[c * rows + i] - top);
      total += w * row_sum[c * rows + i];
      const float* a = acc + (c * rows + i) * D;
      for (int64_t d = 0; d < D; ++d) o[d] += w * a[d];
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

bool check_inputs(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                  const Tensor& out) {
  const Tensor* all[] = {&q, &k, &v, &mask, &out};
  for (const Tensor* t : all) {
    ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_default_dim_order(*t), InvalidArgument, false,
                        "voxtral::ring_attention takes contiguous tensors");
  }
  const Tensor* floats[] = {&q, &mask, &out};
  for (const Tensor* t : floats) {
    ET_KERNEL_CHECK_MSG(ctx, t->scalar_type() == ScalarType::Float, InvalidArgument, false,
                        "voxtral::ring_attention takes a float32 query, mask and output");
  }
  ET_KERNEL_CHECK_MSG(ctx, k.scalar_type() == v.scalar_type() &&
                               (k.scalar_type() == ScalarType::Float || k.scalar_type() == ScalarType::BFloat16),
                      InvalidArgument, false,
                      "voxtral::ring_attention takes float32 or bfloat16 caches, both of one type");
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 2, InvalidArgument, false,
                      "voxtral::ring_attention: q, k_cache and v_cache are 4-D, mask 2-D");
  ET_KERNEL_CHECK_MSG(ctx, q.size(0) == 1 && k.size(0) == 1 && v.size(0) == 1, InvalidArgument, false,
                      "voxtral::ring_attention: batch size 1");
  for (int d = 1; d < 4; ++d) {
    ET_KERNEL_CHECK_MSG(ctx, k.size(d) == v.size(d), InvalidArgument, false,
                        "voxtral::ring_attention: k_cache and v_cache differ in shape");
  }
  const int64_t heads = q.size(2), kv_heads = k.size(2), head_dim = q.size(3);
  ET_KERNEL_CHECK_MSG(ctx, k.size(3) == head_dim && head_dim % 8 == 0 && head_dim <= kMaxHeadDim,
                      InvalidArgument, false,
                      "voxtral::ring_attention: head_dim must match the caches, be a multiple of 8 and at most 256");
  ET_KERNEL_CHECK_MSG(ctx, kv_heads > 0 && heads % kv_heads == 0, InvalidArgument, false,
                      "voxtral::ring_attention: query heads must be a multiple of KV heads");
  ET_KERNEL_CHECK_MSG(ctx, mask.size(0) == q.size(1) && mask.size(1) == k.size(1), InvalidArgument, false,
                      "voxtral::ring_attention: mask must be [query positions, cache slots]");
  return true;
}

// The operator for one cache element type (float, or bf16 widened as it is read).
template <typename T>
void run(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& mask, Tensor& out) {
  Shapes s{q.size(1), q.size(2), k_cache.size(2), q.size(3), k_cache.size(1), 0};
  s.rep = s.heads / s.kv_heads;
  const int64_t D = s.head_dim, rows = s.seq * s.heads, rows_per_kv = s.seq * s.rep;
  const float* qd = q.const_data_ptr<float>();
  const T* kd = static_cast<const T*>(k_cache.const_data_ptr());
  const T* vd = static_cast<const T*>(v_cache.const_data_ptr());
  const float* md = mask.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();

  // Rows sorted by KV head: row o = g * (S * rep) + j is query head g * rep + j % rep at position j / rep.
  // Scratch (rows, per-item partial softmaxes) is kept per calling thread: no allocation once the largest call ran.
  thread_local std::vector<Row> order;
  thread_local std::vector<float*> out_row;
  thread_local std::vector<float> scratch;
  order.resize(static_cast<size_t>(rows));
  out_row.resize(static_cast<size_t>(rows));
  for (int64_t g = 0; g < s.kv_heads; ++g) {
    for (int64_t j = 0; j < rows_per_kv; ++j) {
      const int64_t pos = j / s.rep, head = g * s.rep + j % s.rep, o = g * rows_per_kv + j;
      order[o] = Row{qd + (pos * s.heads + head) * D, md + pos * s.slots, g * D};
      out_row[o] = od + (pos * s.heads + head) * D;
    }
  }
  // The work items run on pool threads, which must see this thread's buffers (not their own thread_locals).
  const Row* row_order = order.data();
  float* const* row_out = out_row.data();

  // Slot ranges: every item covers one, and their partial softmaxes are merged. The ranges depend on the caches
  // and the thread count only, never on the row count, and a score has the same bits from every scoring loop, so
  // each row's arithmetic is the same however many rows share the call: k encoder steps in one call give the bits
  // of k calls of one step (docs/runtime.md).
  const int64_t blocks = (s.slots + kBlockSlots - 1) / kBlockSlots;
  const int64_t threads = executorch::extension::get_thread_count();
  const int n_ranges = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({blocks, 2 * threads, kMaxRanges})));
  const int64_t per_range = ((blocks + n_ranges - 1) / n_ranges) * kBlockSlots;
  // Row tiles: few rows (a live step) are one tile, so an item streams its slots once for all of them; many rows (a
  // prefill, queued steps) make the work arithmetic, and go by KV head and tiles of kTileRows.
  const bool one_tile = rows <= kMaxItemRows;
  const int64_t tiles_per_kv = one_tile ? 1 : (rows_per_kv + kTileRows - 1) / kTileRows;
  const int64_t n_tiles = one_tile ? 1 : s.kv_heads * tiles_per_kv;
  scratch.resize(static_cast<size_t>(n_ranges * rows * (D + 2)));
  float* acc = scratch.data();
  float* row_max = acc + n_ranges * rows * D;
  float* row_sum = row_max + n_ranges * rows;
  executorch::extension::parallel_for(0, n_tiles * n_ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item / n_ranges, c = item % n_ranges;
      int64_t o = 0, n = rows;
      if (!one_tile) {
        o = (tile / tiles_per_kv) * rows_per_kv + (tile % tiles_per_kv) * kTileRows;
        n = std::min<int64_t>(kTileRows, (tile / tiles_per_kv + 1) * rows_per_kv - o);
      }
      const int64_t at = c * rows + o;  // this item's rows in range c's partial results
      const int64_t slot0 = std::min(s.slots, c * per_range), slot1 = std::min(s.slots, (c + 1) * per_range);
      if (slot0 == slot1) {
        std::fill(row_max + at, row_max + at + n, kMinusInf);
        continue;
      }
      attend(s, row_order + o, static_cast<int>(n), kd, vd, slot0, slot1, acc + at * D, row_max + at, row_sum + at);
    }
  });
  // A live step's few rows merge on the calling thread (cheaper than waking the pool); many rows use the pool.
  executorch::extension::parallel_for(0, rows, one_tile ? rows : kTileRows, [&](int64_t begin, int64_t end) {
    merge(D, n_ranges, rows, acc, row_max, row_sum, row_out, begin, end);
  });
}

}  // namespace

Tensor& ring_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           const Tensor& mask, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, out,
                      "voxtral::ring_attention: cannot resize the output to the query's shape");
  if (!check_inputs(ctx, q, k_cache, v_cache, mask, out)) return out;
  if (k_cache.scalar_type() == ScalarType::BFloat16) {
    run<bf16>(q, k_cache, v_cache, mask, out);
  } else {
    run<float>(q, k_cache, v_cache, mask, out);
  }
  return out;
}

}  // namespace voxtral

EXECUTORCH_LIBRARY(voxtral, "ring_attention.out", voxtral::ring_attention_out);
