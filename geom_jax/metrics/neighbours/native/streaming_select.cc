// Streaming exact k-NN selection over the tiles of a symmetric Gram matrix,
// as XLA FFI handlers for the CPU (geom_jax/metrics/neighbours/symmetric_rows.py).
//
// Every row keeps a buffer of candidates packed as uint64 (order-preserving
// float32 key bits << 32 | column), so one integer order is the (key, column)
// order and ties go to the lower column, as in the NumPy host selection
// (geom_jax/metrics/neighbours/packing.py). A candidate enters a row's buffer
// only below the row's threshold, the m-th smallest packed key of its last
// compaction; a full buffer (cap entries) is compacted to its m smallest by
// nth_element. Keys are sq_j / 2 - G_ij: exactly half of sq_j - 2 G_ij.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kHeader = 2;  // per row: threshold, fill; then cap entries
constexpr int64_t kLane = 16;   // keys tested together against thresholds

inline uint32_t OrderedBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float Unordered(uint32_t o) {
  uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint64_t Pack(float key, uint32_t col) {
  return (static_cast<uint64_t>(OrderedBits(key)) << 32) | col;
}

// Compacts a full buffer of cap packed candidates, keeping at least m: the entries at
// or below a pivot t read off a sorted sample of 32 (a little above the m-th's expected
// place), then t is the row's threshold (no key above t can be among the m smallest,
// as m entries are at or below it). Two branch-free passes instead of nth_element's
// mispredicted ones; where the sample misleads (fewer than m, or almost all, at or
// below t), nth_element.
inline int64_t Compact(uint64_t* buf, int64_t cap, int64_t m, uint64_t* thr) {
  constexpr int64_t kSample = 32;
  uint64_t sample[kSample];
  for (int64_t i = 0; i < kSample; ++i) sample[i] = buf[(2 * i + 1) * cap / (2 * kSample)];
  std::sort(sample, sample + kSample);
  const int64_t q = std::min<int64_t>(kSample - 1, (m * kSample + cap - 1) / cap + 4);
  const uint64_t t = sample[q];
  int64_t count = 0;
  for (int64_t i = 0; i < cap; ++i) count += buf[i] <= t;
  if (count >= m && count <= cap - cap / 8) {
    int64_t j = 0;
    for (int64_t i = 0; i < cap; ++i) {
      const uint64_t v = buf[i];
      buf[j] = v;
      j += v <= t;
    }
    *thr = t;
    return j;
  }
  std::nth_element(buf, buf + m - 1, buf + cap);
  *thr = buf[m - 1];
  return m;
}

struct Rows {
  uint64_t* state;
  float* thr_key;
  int64_t stride;
  int64_t m;
  int64_t cap;

  // Offer (key, col) to row r: kept when below the row's threshold.
  inline void Offer(int64_t r, float key, uint32_t col) const {
    uint64_t* row = state + r * stride;
    const uint64_t p = Pack(key, col);
    if (p >= row[0]) return;
    uint64_t* buf = row + kHeader;
    uint64_t fill = row[1];
    buf[fill++] = p;
    if (static_cast<int64_t>(fill) == cap) {
      fill = Compact(buf, cap, m, &row[0]);
      thr_key[r] = Unordered(static_cast<uint32_t>(row[0] >> 32));
    }
    row[1] = fill;
  }
};


// Partially orders buf[0, fill): buf[p] is the p-th smallest for every p of `positions`
// (ascending, distinct) and buf[0, k) is sorted; linear in fill instead of a sort.
void Arrange(uint64_t* buf, int64_t fill, int64_t k, const std::vector<int64_t>& positions) {
  int64_t end = fill;
  for (auto it = positions.rbegin(); it != positions.rend(); ++it) {
    const int64_t p = *it;
    if (p < k || p >= end) continue;
    std::nth_element(buf, buf + p, buf + end);
    end = p;
  }
  k = std::min(k, end);
  if (k < end) std::nth_element(buf, buf + k, buf + end);
  std::sort(buf, buf + k);
}

std::vector<int64_t> Positions(ffi::Span<const int64_t> ranks) {
  std::vector<int64_t> out;
  for (int64_t r : ranks) out.push_back(r - 1);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

template <typename F>
void Parallel(int64_t items, F&& fn) {
  int64_t threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  threads = std::min<int64_t>({threads, items, 16});
  if (threads <= 1) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t i = next++; i < items; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

ffi::Error Update(ffi::Buffer<ffi::F32> gram, ffi::Buffer<ffi::F32> sq, ffi::AnyBuffer valid,
                  ffi::Buffer<ffi::S32> step, ffi::AnyBuffer state_in,
                  ffi::Buffer<ffi::F32> thr_in, ffi::Result<ffi::AnyBuffer> state_out,
                  ffi::ResultBuffer<ffi::F32> thr_out, int64_t n, int64_t block,
                  int64_t nblocks, int64_t m, int64_t cap) {
  const int64_t np = nblocks * block;
  const int64_t stride = kHeader + cap;
  const int64_t h = nblocks / 2;
  const int64_t width = (h + 1) * block;
  const int64_t mirrored = (nblocks % 2) ? h : h - 1;  // column blocks also used transposed
  if (gram.dimensions().size() != 2 || gram.dimensions()[0] != block ||
      gram.dimensions()[1] != width) {
    return ffi::Error::InvalidArgument("streaming selection: tile shape mismatch");
  }
  if (state_in.size_bytes() != static_cast<size_t>(np * stride * 8)) {
    return ffi::Error::InvalidArgument("streaming selection: state size mismatch");
  }
  if (state_out->untyped_data() != state_in.untyped_data()) {
    std::memcpy(state_out->untyped_data(), state_in.untyped_data(), state_in.size_bytes());
  }
  if (thr_out->typed_data() != thr_in.typed_data()) {
    std::memcpy(thr_out->typed_data(), thr_in.typed_data(), np * sizeof(float));
  }
  const Rows rows{reinterpret_cast<uint64_t*>(state_out->untyped_data()), thr_out->typed_data(),
                  stride, m, cap};
  const float* g = gram.typed_data();
  const float* sqp = sq.typed_data();
  const bool* ok = reinterpret_cast<const bool*>(valid.untyped_data());
  const int64_t i0 = static_cast<int64_t>(step.typed_data()[0]) * block;
  const float inf = std::numeric_limits<float>::infinity();

  // Half squared norms of the tile's columns, +inf where excluded.
  std::vector<float> half(width);
  std::vector<uint32_t> col(width);
  for (int64_t c = 0; c < width; ++c) {
    const int64_t j = (i0 + c) % np;
    col[c] = static_cast<uint32_t>(j);
    half[c] = (j < n && ok[j]) ? 0.5f * sqp[j] : inf;
  }

  // Work items: chunks of block I's rows (direct), and chunks of the columns of each
  // mirrored block (its rows, transposed), so that the threads share both evenly.
  const int64_t row_chunk = 32;
  const int64_t col_chunk = 256;
  const int64_t direct_items = (block + row_chunk - 1) / row_chunk;
  const int64_t col_items = (block + col_chunk - 1) / col_chunk;
  Parallel(direct_items + mirrored * col_items, [&](int64_t item) {
    if (item < direct_items) {
      // Rows of block I against every column of the tile; a lane of kLane keys is
      // tested against the row's threshold at once and read again only if one passes.
      const int64_t a_end = std::min(block, (item + 1) * row_chunk);
      for (int64_t a = item * row_chunk; a < a_end; ++a) {
        const int64_t r = i0 + a;
        if (r >= n) break;
        const float* gr = g + a * width;
        int64_t c = 0;
        for (; c + kLane <= width; c += kLane) {
          const float t = rows.thr_key[r];
          bool any = false;
          for (int64_t l = 0; l < kLane; ++l) any |= (half[c + l] - gr[c + l] <= t);
          if (!any) continue;
          for (int64_t l = c; l < c + kLane; ++l) {
            const float key = half[l] - gr[l];
            if (key <= rows.thr_key[r] && key < inf && l != a) rows.Offer(r, key, col[l]);
          }
        }
        for (; c < width; ++c) {
          const float key = half[c] - gr[c];
          if (key <= rows.thr_key[r] && key < inf && c != a) rows.Offer(r, key, col[c]);
        }
      }
      return;
    }
    // Rows of block I + d against the columns of block I: the transposed tile.
    const int64_t d = (item - direct_items) / col_items + 1;
    const int64_t b0 = ((item - direct_items) % col_items) * col_chunk;
    const int64_t r0 = ((i0 / block + d) % nblocks) * block;
    const int64_t b_end = std::min({block, n - r0, b0 + col_chunk});
    if (b0 >= b_end) return;
    float* thr = rows.thr_key + r0;
    for (int64_t a = 0; a < block; ++a) {
      const float hs = half[a];
      if (!(hs < inf)) continue;
      const float* gr = g + a * width + d * block;
      int64_t b = b0;
      for (; b + kLane <= b_end; b += kLane) {
        bool any = false;
        for (int64_t l = 0; l < kLane; ++l) any |= (hs - gr[b + l] <= thr[b + l]);
        if (!any) continue;
        for (int64_t l = b; l < b + kLane; ++l) {
          const float key = hs - gr[l];
          if (key <= thr[l]) rows.Offer(r0 + l, key, col[a]);
        }
      }
      for (; b < b_end; ++b) {
        const float key = hs - gr[b];
        if (key <= thr[b]) rows.Offer(r0 + b, key, col[a]);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Finish(ffi::AnyBuffer state, ffi::AnyBuffer valid, ffi::Result<ffi::Buffer<ffi::S32>> near,
                  ffi::Result<ffi::Buffer<ffi::S32>> ranked,
                  ffi::Result<ffi::Buffer<ffi::F32>> near_keys, int64_t n, int64_t m, int64_t cap,
                  int64_t k_near, ffi::Span<const int64_t> ranks) {
  const int64_t stride = kHeader + cap;
  const int64_t nr = static_cast<int64_t>(ranks.size());
  uint64_t* st = reinterpret_cast<uint64_t*>(state.untyped_data());
  const bool* ok = reinterpret_cast<const bool*>(valid.untyped_data());
  int32_t* out_near = near->typed_data();
  int32_t* out_rank = ranked->typed_data();
  float* out_keys = near_keys->typed_data();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<int64_t> positions = Positions(ranks);
  const int64_t chunk = 256;
  Parallel((n + chunk - 1) / chunk, [&](int64_t item) {
    std::vector<int32_t> cols(m);
    std::vector<float> keys(m);
    const int64_t r_end = std::min(n, (item + 1) * chunk);
    for (int64_t r = item * chunk; r < r_end; ++r) {
      uint64_t* row = st + r * stride;
      uint64_t* buf = row + kHeader;
      const int64_t fill = static_cast<int64_t>(row[1]);
      const int64_t count = std::min(fill, m);
      if (fill > m) std::nth_element(buf, buf + m, buf + fill);
      Arrange(buf, count, k_near, positions);
      for (int64_t t = 0; t < count; ++t) {
        cols[t] = static_cast<int32_t>(buf[t] & 0xffffffffu);
        keys[t] = 2.0f * Unordered(static_cast<uint32_t>(buf[t] >> 32));
      }
      // Rows short of valid columns continue with the excluded ones in column order.
      int64_t t = count;
      for (int64_t j = 0; t < m && j < n; ++j) {
        if (j == r || !ok[j]) {
          cols[t] = static_cast<int32_t>(j);
          keys[t++] = inf;
        }
      }
      for (int64_t q = 0; q < k_near; ++q) {
        out_near[r * k_near + q] = cols[q];
        out_keys[r * k_near + q] = keys[q];
      }
      for (int64_t q = 0; q < nr; ++q) out_rank[r * nr + q] = cols[ranks[q] - 1];
    }
  });
  return ffi::Error::Success();
}


// Per-thread scratch of SelectRow.
struct Scratch {
  std::vector<uint64_t> buf, tmp;
  std::vector<int32_t> bucket, cursor;
  std::vector<int64_t> wanted;
  std::vector<std::vector<int32_t>> start;
};

constexpr int64_t kSmallBucket = 64;
constexpr int kMaxDepth = 4;

// Orders buf[0, size) (packed keys) so that buf[p] is the p-th smallest for each p of
// `wanted` (ascending, distinct, < size): the keys are spread over `size` buckets
// linearly between their min and max (a monotone map: equal keys share a bucket), the
// buckets up to the one holding the last wanted position placed in bucket order, and
// each bucket holding a wanted position sorted when small, else bucketed again between
// its own min and max (so that a few far keys, which stretch the first range, cost one
// more pass). Linear in size and branch-light, where nth_element mispredicts.
void SelectPositions(uint64_t* buf, int64_t size, const int64_t* wanted, int64_t nwanted,
                     int64_t base, int depth, Scratch& s) {
  // positions are wanted[q] - base
  if (nwanted == 0) return;
  if (size <= kSmallBucket) {
    std::sort(buf, buf + size);
    return;
  }
  float lo = Unordered(static_cast<uint32_t>(buf[0] >> 32)), hi = lo;
  for (int64_t i = 1; i < size; ++i) {
    const float key = Unordered(static_cast<uint32_t>(buf[i] >> 32));
    lo = std::min(lo, key);
    hi = std::max(hi, key);
  }
  const int64_t target = wanted[nwanted - 1] - base;
  if (hi > lo && 4 * (target + 1) < size) {
    // The range's top from a strided sample: about the key at twice the last wanted
    // position, so that one far key does not squeeze the rest into a few buckets (keys
    // above it share the last bucket; a low estimate costs one more level).
    constexpr int64_t kSample = 64;
    float sample[kSample];
    for (int64_t q = 0; q < kSample; ++q)
      sample[q] = Unordered(static_cast<uint32_t>(buf[q * size / kSample] >> 32));
    const int64_t at = std::min<int64_t>(kSample - 1, (2 * (target + 1) * kSample) / size + 1);
    std::nth_element(sample, sample + at, sample + kSample);
    if (sample[at] > lo) hi = std::min(hi, sample[at]);
  }
  if (!(hi > lo) || depth >= kMaxDepth) {
    // one key value (order by column), or the depth bound: the prefix of consecutive
    // wanted positions sorted, the others placed by nth_element
    int64_t prefix = 0;
    while (prefix < nwanted && wanted[prefix] - base == prefix) ++prefix;
    std::vector<int64_t> rest(nwanted - prefix);
    for (int64_t q = prefix; q < nwanted; ++q) rest[q - prefix] = wanted[q] - base;
    Arrange(buf, size, prefix, rest);
    return;
  }
  const int64_t nb = size;
  const float scale = static_cast<float>(nb) / (hi - lo);
  // Every level's bucket bounds exist before the first recursion: growing s.start inside
  // a deeper call would move the vector whose element `start` refers to here.
  if (s.start.size() < kMaxDepth + 1) s.start.resize(kMaxDepth + 1);
  std::vector<int32_t>& start = s.start[depth];
  start.assign(nb + 1, 0);
  s.bucket.resize(size);
  for (int64_t i = 0; i < size; ++i) {
    const float key = Unordered(static_cast<uint32_t>(buf[i] >> 32));
    int64_t b = static_cast<int64_t>((key - lo) * scale);
    b = std::min(std::max<int64_t>(b, 0), nb - 1);
    s.bucket[i] = static_cast<int32_t>(b);
    ++start[b + 1];
  }
  int64_t last = 0;
  for (int64_t b = 0; b < nb; ++b) {
    start[b + 1] += start[b];
    if (start[b] <= target) last = b;
  }
  const int64_t placed = start[last + 1];
  s.tmp.resize(placed);
  s.cursor.assign(start.begin(), start.begin() + last + 1);
  for (int64_t i = 0; i < size; ++i) {
    const int32_t b = s.bucket[i];
    if (b <= last) s.tmp[s.cursor[b]++] = buf[i];
  }
  std::copy(s.tmp.begin(), s.tmp.begin() + placed, buf);
  int64_t w = 0;
  while (w < nwanted) {
    const int64_t p = wanted[w] - base;
    const int64_t b =
        std::upper_bound(start.begin(), start.begin() + last + 2, p) - start.begin() - 1;
    const int64_t b0 = start[b], b1 = start[b + 1];
    int64_t w_end = w;
    while (w_end < nwanted && wanted[w_end] - base < b1) ++w_end;
    SelectPositions(buf + b0, b1 - b0, wanted + w, w_end - w, base + b0, depth + 1, s);
    w = w_end;
  }
}

// The m smallest valid columns of one row (keys half[j] - g[j], the row's own column
// `self` excluded) in (key, column) order at positions 0..k-1 and `positions`,
// continued by the excluded columns in column order when the row has fewer than m
// valid ones. Where m is a small part of n, each key is tested against a threshold
// (the m-th smallest of the last compaction of a buffer of cap candidates) and most
// are rejected at once; otherwise BucketSelect.
void SelectRow(const float* g, const float* half, int64_t n, int64_t self, int64_t m, int64_t k,
               const std::vector<int64_t>& positions, Scratch& s, int32_t* cols) {
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t cap = std::max<int64_t>(2 * m, m + 64);
  int64_t count = 0;
  if (8 * cap >= n) {
    s.buf.resize(n);
    int64_t e = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float key = half[j] - g[j];
      s.buf[e] = Pack(key, static_cast<uint32_t>(j));
      e += (key < inf) & (j != self);
    }
    count = std::min(e, m);
    s.wanted.clear();
    for (int64_t p = 0; p < std::min(k, count); ++p) s.wanted.push_back(p);
    for (int64_t p : positions)
      if (p >= k && p < count) s.wanted.push_back(p);
    SelectPositions(s.buf.data(), e, s.wanted.data(), static_cast<int64_t>(s.wanted.size()), 0, 0,
                    s);
  } else {
    s.buf.resize(cap);
    uint64_t thr = ~uint64_t{0};
    float thr_key = inf;
    int64_t fill = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float key = half[j] - g[j];
      if (!(key <= thr_key) || !(key < inf) || j == self) continue;
      const uint64_t p = Pack(key, static_cast<uint32_t>(j));
      if (p >= thr) continue;
      s.buf[fill++] = p;
      if (fill == cap) {
        std::nth_element(s.buf.begin(), s.buf.begin() + m - 1, s.buf.begin() + cap);
        thr = s.buf[m - 1];
        thr_key = Unordered(static_cast<uint32_t>(thr >> 32));
        fill = m;
      }
    }
    count = std::min(fill, m);
    if (fill > m) std::nth_element(s.buf.begin(), s.buf.begin() + m, s.buf.begin() + fill);
    Arrange(s.buf.data(), count, k, positions);
  }
  for (int64_t t = 0; t < k && t < count; ++t) cols[t] = static_cast<int32_t>(s.buf[t] & 0xffffffffu);
  for (int64_t p : positions)
    if (p < count) cols[p] = static_cast<int32_t>(s.buf[p] & 0xffffffffu);
  int64_t t = count;
  for (int64_t j = 0; t < m && j < n; ++j) {
    if (j == self || !(half[j] < inf)) cols[t++] = static_cast<int32_t>(j);
  }
}

ffi::Error SelectRows(ffi::Buffer<ffi::F32> gram, ffi::Buffer<ffi::F32> sq, ffi::AnyBuffer valid_near,
                      ffi::AnyBuffer valid_rank, ffi::Buffer<ffi::S32> row0,
                      ffi::Result<ffi::Buffer<ffi::S32>> near,
                      ffi::Result<ffi::Buffer<ffi::S32>> ranked, int64_t k_near,
                      ffi::Span<const int64_t> ranks) {
  const auto dims = gram.dimensions();
  const int64_t rank_count = static_cast<int64_t>(ranks.size());
  if (dims.size() < 2) return ffi::Error::InvalidArgument("select_rows: gram must be [..., R, N]");
  const int64_t n = dims[dims.size() - 1];
  const int64_t r = dims[dims.size() - 2];
  const int64_t slabs = r * n ? static_cast<int64_t>(gram.element_count()) / (r * n) : 0;
  const int64_t need = rank_count ? *std::max_element(ranks.begin(), ranks.end()) : 0;
  const int64_t first = static_cast<int64_t>(row0.typed_data()[0]);
  const float* g = gram.typed_data();
  const float* sqp = sq.typed_data();
  const bool* vn = reinterpret_cast<const bool*>(valid_near.untyped_data());
  const bool* vr = reinterpret_cast<const bool*>(valid_rank.untyped_data());
  int32_t* out_near = near->typed_data();
  int32_t* out_rank = ranked->typed_data();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> half_near(slabs * n), half_rank(slabs * n);
  std::vector<char> same(slabs);
  const std::vector<int64_t> positions = Positions(ranks), none;
  for (int64_t s = 0; s < slabs; ++s) {
    same[s] = std::memcmp(vn + s * n, vr + s * n, n) == 0;
    for (int64_t j = 0; j < n; ++j) {
      half_near[s * n + j] = vn[s * n + j] ? 0.5f * sqp[s * n + j] : inf;
      half_rank[s * n + j] = vr[s * n + j] ? 0.5f * sqp[s * n + j] : inf;
    }
  }
  const int64_t chunk = 64;
  const int64_t per_slab = (r + chunk - 1) / chunk;
  Parallel(slabs * per_slab, [&](int64_t item) {
    const int64_t s = item / per_slab;
    const int64_t a_end = std::min(r, (item % per_slab + 1) * chunk);
    Scratch scratch;
    std::vector<int32_t> cols(std::max(k_near, need));
    for (int64_t a = (item % per_slab) * chunk; a < a_end; ++a) {
      const float* row = g + (s * r + a) * n;
      int32_t* nr = out_near + (s * r + a) * k_near;
      int32_t* rk = out_rank + (s * r + a) * rank_count;
      if (same[s] && k_near && need) {
        SelectRow(row, &half_near[s * n], n, first + a, std::max(k_near, need), k_near, positions,
                  scratch, cols.data());
        std::copy(cols.begin(), cols.begin() + k_near, nr);
        for (int64_t q = 0; q < rank_count; ++q) rk[q] = cols[ranks[q] - 1];
        continue;
      }
      if (k_near) {
        SelectRow(row, &half_near[s * n], n, first + a, k_near, k_near, none, scratch,
                  cols.data());
        std::copy(cols.begin(), cols.begin() + k_near, nr);
      }
      if (need) {
        SelectRow(row, &half_rank[s * n], n, first + a, need, 0, positions, scratch, cols.data());
        for (int64_t q = 0; q < rank_count; ++q) rk[q] = cols[ranks[q] - 1];
      }
    }
  });
  return ffi::Error::Success();
}

// Each row of (d2, idx) [..., K] sorted by (d2, idx as uint32), its first k kept.
ffi::Error SortRows(ffi::Buffer<ffi::F32> d2, ffi::Buffer<ffi::S32> idx,
                    ffi::Result<ffi::Buffer<ffi::F32>> values,
                    ffi::Result<ffi::Buffer<ffi::S32>> order, int64_t k) {
  const auto dims = d2.dimensions();
  const int64_t width = dims.size() ? dims[dims.size() - 1] : 1;
  const int64_t rows = width ? static_cast<int64_t>(d2.element_count()) / width : 0;
  const float* dp = d2.typed_data();
  const int32_t* ip = idx.typed_data();
  float* vo = values->typed_data();
  int32_t* oo = order->typed_data();
  const int64_t chunk = 1024;
  Parallel((rows + chunk - 1) / chunk, [&](int64_t item) {
    std::vector<uint64_t> buf(width);
    const int64_t end = std::min(rows, (item + 1) * chunk);
    for (int64_t row = item * chunk; row < end; ++row) {
      for (int64_t c = 0; c < width; ++c)
        buf[c] = Pack(dp[row * width + c], static_cast<uint32_t>(ip[row * width + c]));
      std::partial_sort(buf.begin(), buf.begin() + k, buf.end());
      for (int64_t c = 0; c < k; ++c) {
        vo[row * k + c] = Unordered(static_cast<uint32_t>(buf[c] >> 32));
        oo[row * k + c] = static_cast<int32_t>(buf[c] & 0xffffffffu);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GeomJaxStreamUpdate, Update,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("nblocks")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("cap"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GeomJaxStreamFinish, Finish,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("cap")
                                  .Attr<int64_t>("k_near")
                                  .Attr<ffi::Span<const int64_t>>("ranks"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GeomJaxSelectRows, SelectRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k_near")
                                  .Attr<ffi::Span<const int64_t>>("ranks"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GeomJaxSortRows, SortRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
