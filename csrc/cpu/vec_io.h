// Loads and stores between a row's storage (float, double, Half, BFloat16) and opmath lanes
// (float for the 16-bit types): n <= Vec::size() elements, lanes past n read as zero. Tails
// are masked where the ISA has masks (AVX-512: every dtype; AVX2: float), so a row whose length
// is not a multiple of the width costs one more vector, not a scalar loop. The 16-bit types
// convert with the F16C / AVX-512 instructions, so that they cost no more than float.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

// For a lambda that must be inlined into its caller's loop.
#if defined(__GNUC__)
#define FOCAL_LOSS_EXT_ALWAYS_INLINE __attribute__((always_inline))
#else
#define FOCAL_LOSS_EXT_ALWAYS_INLINE
#endif

namespace focal_loss_ext {
namespace cpu {
namespace {

using at::vec::Vectorized;

template <typename scalar_t>
constexpr bool kIs16Bit = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

#if defined(CPU_CAPABILITY_AVX512)
#define FOCAL_LOSS_EXT_VEC_16BIT 1
using Raw16 = __m256i;  // 16 lanes of 16 bits: one float vector's worth
using RawF = __m512;
inline Raw16 load_raw16(const void* src, int64_t n) {
  return _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), src);
}
inline void store_raw16(void* dst, Raw16 v, int64_t n) {
  _mm256_mask_storeu_epi16(dst, static_cast<__mmask16>((1u << n) - 1), v);
}
#elif defined(CPU_CAPABILITY_AVX2)
#define FOCAL_LOSS_EXT_VEC_16BIT 1
using Raw16 = __m128i;  // 8 lanes of 16 bits
using RawF = __m256;
inline Raw16 load_raw16(const void* src, int64_t n) {
  if (n == 8) return _mm_loadu_si128(static_cast<const __m128i*>(src));
  alignas(16) uint16_t buf[8] = {};
  std::copy_n(static_cast<const uint16_t*>(src), n, buf);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}
inline void store_raw16(void* dst, Raw16 v, int64_t n) {
  if (n == 8) return _mm_storeu_si128(static_cast<__m128i*>(dst), v);
  alignas(16) uint16_t buf[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(buf), v);
  std::copy_n(buf, n, static_cast<uint16_t*>(dst));
}
inline __m256i tail_mask32(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

#if defined(FOCAL_LOSS_EXT_VEC_16BIT)
// at::vec's converters (round to nearest even; NaN stays NaN).
template <typename scalar_t>
inline Vectorized<float> widen(Raw16 raw) {
  RawF out;
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    at::vec::cvtfp16_fp32(raw, out);
  } else {
    at::vec::cvtbf16_fp32(raw, out);
  }
  return out;
}
template <typename scalar_t>
inline Raw16 narrow(const Vectorized<float>& v) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return at::vec::cvtfp32_fp16(v);
  } else {
    return at::vec::cvtfp32_bf16(v);
  }
}
#endif

template <typename opmath_t, typename scalar_t>
inline Vectorized<opmath_t> load(const scalar_t* src, int64_t n) {
  using Vec = Vectorized<opmath_t>;
  if constexpr (std::is_same_v<opmath_t, scalar_t>) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, float>) {
      return n == Vec::size() ? Vec::loadu(src) : Vec(_mm256_maskload_ps(src, tail_mask32(n)));
    }
#endif
    return n == Vec::size() ? Vec::loadu(src) : Vec::loadu(src, n);
  } else {
#if defined(FOCAL_LOSS_EXT_VEC_16BIT)
    if constexpr (kIs16Bit<scalar_t> && std::is_same_v<opmath_t, float>) {
      return widen<scalar_t>(load_raw16(src, n));
    }
#endif
    opmath_t buf[Vec::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<opmath_t>(src[i]);
    return Vec::loadu(buf);
  }
}

template <typename scalar_t, typename opmath_t>
inline void store(scalar_t* dst, const Vectorized<opmath_t>& v, int64_t n) {
  if constexpr (std::is_same_v<opmath_t, scalar_t>) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (n == Vectorized<float>::size()) return v.store(dst);
      return _mm256_maskstore_ps(dst, tail_mask32(n), v);
    }
#endif
    v.store(dst, n);
  } else {
#if defined(FOCAL_LOSS_EXT_VEC_16BIT)
    if constexpr (kIs16Bit<scalar_t> && std::is_same_v<opmath_t, float>) {
      return store_raw16(dst, narrow<scalar_t>(v), n);
    }
#endif
    opmath_t buf[Vectorized<opmath_t>::size()];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(buf[i]);
  }
}

// v with the lanes from n on set to zero.
template <typename T>
inline Vectorized<T> first_lanes(const Vectorized<T>& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << n) - 1), v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) return _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask32(n)));
#endif
  return Vectorized<T>::set(Vectorized<T>(0), v, n);
}

template <typename scalar_t>
inline void fill_zero(void* base, int64_t offset, int64_t n) {
  if (base != nullptr) std::fill_n(static_cast<scalar_t*>(base) + offset, n, scalar_t(0));
}

// The "none" loss buffer of a row loop over scalar_t inputs: scalar_t values, or opmath ones
// when the operator returns the loss in opmath (RowsPlan::opmath_loss, under autocast).
template <typename scalar_t>
struct LossOut {
  using opmath_t = at::opmath_type<scalar_t>;
  void* base;  // nullptr: the loss is reduced
  bool opmath;

  explicit operator bool() const { return base != nullptr; }
  void write(int64_t offset, const Vectorized<opmath_t>& v, int64_t n) const {
    if (opmath) return store(static_cast<opmath_t*>(base) + offset, v, n);
    store(static_cast<scalar_t*>(base) + offset, v, n);
  }
  void set(int64_t offset, opmath_t value) const {
    if (opmath) {
      static_cast<opmath_t*>(base)[offset] = value;
    } else {
      static_cast<scalar_t*>(base)[offset] = static_cast<scalar_t>(value);
    }
  }
  void zero(int64_t offset, int64_t n) const {
    if (opmath) return fill_zero<opmath_t>(base, offset, n);
    fill_zero<scalar_t>(base, offset, n);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace focal_loss_ext
